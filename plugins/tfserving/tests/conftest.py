"""The suite runs with --import-mode=importlib: shared helpers (_tfs_shared.py, a name no
other test folder uses) are found through this folder on sys.path."""

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
