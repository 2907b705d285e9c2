"""Request rows as TorchServe's frontend makes them, and archives unpacked into the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from _ts_archives import write_mar
from dl_inference_torchserve.archive import ArchiveCache
from dl_inference_torchserve.requests import decoded, fields


def test_raw_json_and_text_bodies() -> None:
    assert fields(b"\x00\x01", {"Content-Type": "application/octet-stream"}) == [
        ("body", "application/octet-stream", b"\x00\x01")
    ]
    assert fields(b"", {}) == [("body", "", b"")]
    assert decoded("application/json", b'{"a": 1}') == {"a": 1}
    assert decoded("application/json", b"{bad") == bytearray(b"{bad")  # forwarded as is
    assert decoded("text/plain", b"hi") == "hi"
    assert decoded("", b"x") == bytearray(b"x")


def test_multipart_parts_keep_their_bytes() -> None:
    payload = b"line\r\n--not-the-boundary\r\n\x00\xff"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="k"\r\n\r\nv\r\n--XyZ--\r\n'
    )
    found = fields(body, {"content-type": 'multipart/form-data; boundary="XyZ"'})
    assert found == [("data", "application/octet-stream", payload), ("k", "", b"v")]


def test_urlencoded_fields() -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert fields(b"a=1&b=x%20y+z&flag", form) == [("a", "", b"1"), ("b", "", b"x y z")]


HANDLER = {"h.py": "def handle(data, context):\n    return data\n"}


def test_an_archive_is_unpacked_once_and_again_when_it_changes(tmp_path: Path) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    archive = write_mar(store, "m", HANDLER, "h.py")
    [(name, folder)] = cache.models(store)
    assert name == "m" and (folder / "1" / "MAR-INF" / "MANIFEST.json").is_file()
    assert (folder / "config.yaml").read_text() == "backend: torchserve\n"
    handler = folder / "1" / "h.py"
    first = handler.stat().st_mtime_ns
    assert ArchiveCache(tmp_path / "cache").models(store) == [(name, folder)]  # a restart
    assert handler.stat().st_mtime_ns == first  # not unpacked again
    write_mar(store, "m", {"h.py": "def handle(data, context):\n    return [1]\n"}, "h.py")
    os.utime(archive, ns=(first + 10**9, first + 10**9))
    assert cache.models(store) == [(name, folder)]
    assert "return [1]" in handler.read_text()


def test_archives_of_one_model_are_its_versions(tmp_path: Path) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    write_mar(store, "m", HANDLER, "h.py", file_name="a", version="1.0")
    write_mar(store, "m", HANDLER, "h.py", file_name="b", version="2.0")
    write_mar(store, "m", HANDLER, "h.py", file_name="c", version="2.0")  # left out
    write_mar(store, "", HANDLER, "h.py", file_name="unnamed")  # no modelName: the file's
    (store / "broken.mar").write_bytes(b"not a zip")
    found = dict(cache.models(store))
    assert sorted(found) == ["m", "unnamed"] and found["m"].parent != found["unnamed"].parent
    folder = found["m"]
    manifests = [json.loads((folder / v / "MAR-INF" / "MANIFEST.json").read_text()) for v in "12"]
    assert [m["model"]["modelVersion"] for m in manifests] == ["1.0", "2.0"]
    assert not (folder / "3").exists()
    assert "version_policy:\n  all: true" in (folder / "config.yaml").read_text()
    (store / "a.mar").unlink()  # version 2.0 is now the only one, in folder 1
    assert dict(cache.models(store))["m"] == folder
    manifest = json.loads((folder / "1" / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["modelVersion"] == "2.0" and not (folder / "2").exists()
    assert (folder / "config.yaml").read_text() == "backend: torchserve\n"


def test_the_default_cache_must_be_private(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from dl_inference_torchserve import archive

    monkeypatch.delenv("DLI_TORCHSERVE_CACHE", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"dl-inference-torchserve-{os.getuid()}"
    assert archive.cache_root() == shared and archive.private(shared)
    shared.chmod(0o777)  # as if another user had made it, writable by all
    other = archive.cache_root()
    assert other != shared and archive.private(other)
    other.rmdir()
