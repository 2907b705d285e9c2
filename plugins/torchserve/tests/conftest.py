"""The suite runs with --import-mode=importlib, so the archive helpers (_ts_archives.py, a
name no other test folder uses) are found through this folder on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
