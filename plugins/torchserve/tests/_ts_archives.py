"""Model archives for the plugin's tests, written as torch-model-archiver lays them out (a
zip: the handler and model files at the top, MAR-INF/MANIFEST.json); the side-by-side tests
in tests/reference use the real archiver."""

from __future__ import annotations

import json
import textwrap
import zipfile
from pathlib import Path


def write_mar(
    store: Path,
    name: str,
    files: dict[str, str | bytes],
    handler: str,
    *,
    version: str = "1.0",
    file_name: str | None = None,
    **model: str,
) -> Path:
    """``<store>/<file_name or name>.mar`` holding ``files`` (text is dedented)."""
    store.mkdir(parents=True, exist_ok=True)
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {"modelName": name, "handler": handler, "modelVersion": version, **model},
        "archiverVersion": "0.12.0",
    }
    path = store / f"{file_name or name}.mar"
    with zipfile.ZipFile(path, "w") as archive:
        for file, content in files.items():
            data = textwrap.dedent(content).encode() if isinstance(content, str) else content
            archive.writestr(file, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
    return path
