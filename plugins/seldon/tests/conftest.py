"""The Seldon plugin's tests: helpers found by name, as the suite runs in importlib mode."""

from __future__ import annotations

import sys
from pathlib import Path

# --import-mode=importlib puts no test folder on sys.path; _seldon_real.py (a name no
# other test folder uses) is imported through this one.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
