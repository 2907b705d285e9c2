"""Write model repositories for tests: ``<root>/<model>/<version>/...`` plus config.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_python_model(
    root: Path, name: str, code: str, config: str = "", version: int = 1
) -> Path:
    """Write ``<root>/<name>/<version>/model.py`` (and ``config.yaml`` when given).

    ``code`` and ``config`` are dedented, so tests can indent them inline. Returns the
    model folder.
    """
    folder = root / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / str(version) / "model.py").write_text(textwrap.dedent(code))
    if config:
        (folder / "config.yaml").write_text(textwrap.dedent(config))
    return folder
