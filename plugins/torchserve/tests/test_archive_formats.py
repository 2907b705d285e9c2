"""The three archive formats of torch-model-archiver (zip ``.mar``, ``tgz``, ``no-archive``
folders) served alike, and hostile archives refused by the one member rule while the
others keep serving."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from _ts_archives import write_mar
from dl_inference_torchserve import archive as archives
from dl_inference_torchserve.archive import REFUSED, ArchiveCache

from dl_inference.testing import ServerProcess

HANDLER = {
    "h.py": """
        def handle(data, context):
            return None if data is None else [{"v": 1} for _ in data]
    """
}


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("archive_format", ["default", "tgz", "no-archive"])
def test_each_format_becomes_the_same_model_folder(tmp_path: Path, archive_format: str) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    extra = {"sub/labels.json": "{}", **HANDLER}
    path = write_mar(store, "m", extra, "h.py", archive_format=archive_format, file_name="f")
    [(name, folder)] = cache.models(store)
    # Named by the manifest's modelName, whatever the file or folder is called (TorchServe's
    # load_models=all does so for each format).
    assert name == "m"
    assert files(folder / "1") == [
        ".dli-archive-stamp",
        "MAR-INF/MANIFEST.json",
        "h.py",
        "sub/labels.json",
    ]
    handler = folder / "1" / "h.py"
    first = handler.stat().st_mtime_ns
    assert ArchiveCache(tmp_path / "cache").models(store) == [(name, folder)]  # a restart
    assert handler.stat().st_mtime_ns == first  # not unpacked again
    changed = {"h.py": "def handle(data, context):\n    return [2]\n", "sub/labels.json": "{}"}
    write_mar(store, "m", changed, "h.py", archive_format=archive_format, file_name="f")
    target = path / "h.py" if archive_format == "no-archive" else path
    os.utime(target, ns=(first + 10**9, first + 10**9))
    assert cache.models(store) == [(name, folder)]
    assert "return [2]" in handler.read_text()
    assert list(store.iterdir()) == [path]  # the store is never written to


def test_formats_mix_as_versions_and_other_folders_are_left_to_the_kernel(
    tmp_path: Path,
) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    write_mar(store, "m", HANDLER, "h.py", file_name="a", version="1.0")
    write_mar(store, "m", HANDLER, "h.py", file_name="b", version="2.0", archive_format="tgz")
    write_mar(store, "m", HANDLER, "h.py", file_name="c", archive_format="no-archive")
    (store / "plain" / "1").mkdir(parents=True)  # a dl-inference model folder: not an archive
    (store / "x.tar.gz").write_bytes(b"not gzip")  # unreadable: left out, logged
    found = dict(cache.models(store))
    assert list(found) == ["m"]
    versions = [
        json.loads((found["m"] / v / "MAR-INF/MANIFEST.json").read_text())["model"]
        for v in ("1", "2")
    ]
    assert [v["modelVersion"] for v in versions] == ["1.0", "2.0"]
    assert not (found["m"] / "3").exists()  # c is 1.0 again: left out


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> None:
    manifest = {"model": {"modelName": path.stem, "handler": "h.py", "modelVersion": "1.0"}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for info, data in entries:
            zipped.writestr(info, data)


def _tgz(path: Path, entries: list[tarfile.TarInfo], data: bytes = b"") -> None:
    name = path.name.removesuffix(".tar.gz")
    manifest = json.dumps(
        {"model": {"modelName": name, "handler": "h.py", "modelVersion": "1.0"}}
    ).encode()
    with tarfile.open(path, "w:gz") as tarred:
        info = tarfile.TarInfo(f"{name}/MAR-INF/MANIFEST.json")
        info.size = len(manifest)
        tarred.addfile(info, io.BytesIO(manifest))
        for entry in entries:
            entry.name = entry.name.replace("{name}", name)
            tarred.addfile(entry, io.BytesIO(data) if entry.isfile() else None)


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def hostile_store(store: Path) -> None:
    """One archive per way of escaping or exhausting the cache, and a good one."""
    store.mkdir(parents=True)
    write_mar(store, "good", HANDLER, "h.py", archive_format="tgz")
    _zip(store / "zip_traversal.mar", [("../../escaped.py", b"x = 1\n")])
    link = zipfile.ZipInfo("h.py")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    _zip(store / "zip_link.mar", [(link, b"/etc/passwd")])
    _zip(store / "zip_bomb.mar", [("weights.bin", bytes(4 * 1024 * 1024))])
    _tgz(store / "tgz_traversal.tar.gz", [_entry("{name}/../../escaped.py", size=6)], b"x = 1\n")
    _tgz(store / "tgz_absolute.tar.gz", [_entry("/tmp/escaped.py", size=6)], b"x = 1\n")
    _tgz(store / "tgz_symlink.tar.gz", [_entry("{name}/h.py", tarfile.SYMTYPE, link="/etc")])
    _tgz(store / "tgz_hardlink.tar.gz", [_entry("{name}/h.py", tarfile.LNKTYPE, link="/etc/x")])
    _tgz(store / "tgz_device.tar.gz", [_entry("{name}/dev", tarfile.CHRTYPE)])
    _tgz(
        store / "tgz_bomb.tar.gz",
        [_entry("{name}/weights.bin", size=4 * 1024 * 1024)],
        bytes(4 * 1024 * 1024),
    )
    folder = write_mar(store, "folder_link", HANDLER, "h.py", archive_format="no-archive")
    (folder / "secret").symlink_to("/etc/passwd")


REASONS = {
    "zip_traversal": "leaves the model folder",
    "zip_link": "is a link",
    "zip_bomb": "decompression bomb",
    "tgz_traversal": "leaves the model folder",
    "tgz_absolute": "leaves the model folder",
    "tgz_symlink": "is a link",
    "tgz_hardlink": "is a link",
    "tgz_device": "is not a file or folder",
    "tgz_bomb": "decompression bomb",
    "folder_link": "is a link",
}


@pytest.fixture
def small_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bomb limits a test's archives reach (the real floor is 256 MiB)."""
    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 1024 * 1024)


def test_hostile_archives_become_models_that_fail_to_load_with_the_reason(
    tmp_path: Path, small_bombs: None
) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    hostile_store(store)
    found = dict(cache.models(store))
    assert sorted(found) == sorted([*REASONS, "good"])
    for name, reason in REASONS.items():
        version = found[name] / "1"
        assert files(version) == sorted([".dli-archive-stamp", REFUSED, "MAR-INF/MANIFEST.json"]), (
            name
        )
        assert reason in (version / REFUSED).read_text(), name
    assert "h.py" in files(found["good"] / "1")
    assert not list(tmp_path.rglob("escaped.py"))


def test_the_cache_disk_bounds_what_unpacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    write_mar(store, "big", {**HANDLER, "w.bin": bytes(2048)}, "h.py")
    usage = archives.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    [(_, folder)] = cache.models(store)
    assert "bytes free in the cache folder" in (folder / "1" / REFUSED).read_text()


def get(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=b"x", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_server_serves_every_format_and_refuses_hostile_archives(tmp_path: Path) -> None:
    store = tmp_path / "store"
    hostile_store(store)
    write_mar(store, "zipped", HANDLER, "h.py")
    write_mar(store, "folder", HANDLER, "h.py", archive_format="no-archive", file_name="dir")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    config = tmp_path / "server.yaml"
    config.write_text(
        f"model_repository: {store}\nserver:\n  strict_readiness: false\n  repository_poll_s: 0.2\n"
    )
    with ServerProcess(["-c", str(config)], env=env) as server:
        deadline = time.monotonic() + 60
        while get(f"{server.http_url}/predictions/zipped")[0] != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        for name in ("good", "zipped", "folder"):
            assert get(f"{server.http_url}/predictions/{name}") == (200, {"v": 1}), name
        for name in ("zip_traversal", "tgz_symlink", "folder_link"):
            status, error = get(f"{server.http_url}/predictions/{name}")
            assert (status, error["type"]) == (503, "ServiceUnavailableException"), name
        time.sleep(1.0)  # a few polls
        output = server.output()
        assert "tgz_symlink.tar.gz is refused: 'tgz_symlink/h.py' is a link" in output
        # The kernel's scan skips the no-archive folders (no version folders), saying so
        # once, not at every poll.
        assert output.count(f"folder={store / 'dir'}") == 1, output
    assert not list(tmp_path.rglob("escaped.py"))


def test_server_config_overrides_a_no_archive_folder_named_as_its_model(tmp_path: Path) -> None:
    # The folder's name is its model's name: the repository folder (no version folder: not
    # a model of the kernel's) must not hide the model the archive is from the override.
    store = tmp_path / "store"
    write_mar(store, "folder", HANDLER, "h.py", archive_format="no-archive")
    assert (store / "folder" / "MAR-INF" / "MANIFEST.json").is_file()
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    config = tmp_path / "server.yaml"
    config.write_text(
        f"model_repository: {store}\n"
        "models:\n  folder: {max_batch_size: 6, max_queue_delay_ms: 7}\n"
    )
    with ServerProcess(["-c", str(config)], env=env) as server:
        deadline = time.monotonic() + 60
        while get(f"{server.http_url}/predictions/folder")[0] != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert get(f"{server.http_url}/predictions/folder") == (200, {"v": 1})
        with urllib.request.urlopen(f"{server.http_url}/v2/models/folder/config") as reply:
            model = json.loads(reply.read())
        assert model["max_batch_size"] == 6, model


def test_archives_with_too_many_members_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past MAX_MEMBERS an archive is refused in every format, while its members are listed:
    a zip fails to load with the reason; a tar, listed whole to find its manifest, is
    refused before the manifest is read, so it is left out with the reason logged."""
    monkeypatch.setattr(archives, "MAX_MEMBERS", 4)
    store, cache = tmp_path / "store", ArchiveCache(tmp_path / "cache")
    many = {**HANDLER, **{f"part{i}.txt": b"x" for i in range(5)}}
    write_mar(store, "zipped", many, "h.py")
    write_mar(store, "tarred", many, "h.py", archive_format="tgz")
    write_mar(store, "few", HANDLER, "h.py")
    found = dict(cache.models(store))
    assert sorted(found) == ["few", "zipped"]
    assert "it has more than 4 members" in (found["zipped"] / "1" / REFUSED).read_text()
    assert "h.py" in files(found["few"] / "1")
    logged = capsys.readouterr().out
    assert "tarred.tar.gz" in logged and "it is refused" in logged
    assert "it has more than 4 members" in logged
