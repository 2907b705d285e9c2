"""Model archives for the plugin's tests, written as torch-model-archiver lays them out (a
zip: the handler and model files at the top, MAR-INF/MANIFEST.json; ``--archive-format
tgz``: the same under ``<name>/`` in a .tar.gz; ``no-archive``: a folder); the side-by-side
tests in tests/reference use the real archiver."""

from __future__ import annotations

import io
import json
import tarfile
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
    archive_format: str = "default",
    **model: str,
) -> Path:
    """``<store>/<file_name or name>.mar`` holding ``files`` (text is dedented); with
    ``archive_format`` ``"tgz"`` ``<...>.tar.gz``, with ``"no-archive"`` the folder
    ``<store>/<file_name or name>/``."""
    store.mkdir(parents=True, exist_ok=True)
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {"modelName": name, "handler": handler, "modelVersion": version, **model},
        "archiverVersion": "0.12.0",
    }
    contents = {
        file: textwrap.dedent(content).encode() if isinstance(content, str) else content
        for file, content in files.items()
    }
    contents["MAR-INF/MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    if archive_format == "tgz":
        path = store / f"{file_name or name}.tar.gz"
        with tarfile.open(path, "w:gz") as tarred:
            for file, data in contents.items():
                info = tarfile.TarInfo(f"{name}/{file}")
                info.size = len(data)
                tarred.addfile(info, io.BytesIO(data))
        return path
    if archive_format == "no-archive":
        path = store / (file_name or name)
        for file, data in contents.items():
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_bytes(data)
        return path
    path = store / f"{file_name or name}.mar"
    with zipfile.ZipFile(path, "w") as archive:
        for file, data in contents.items():
            archive.writestr(file, data)
    return path
