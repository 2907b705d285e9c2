"""A changed archive is unpacked again and its model reloaded by the repository poll; a new
archive dropped into the store is served without a restart, a removed one's model unloaded."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from _ts_archives import write_mar

from dl_inference.testing import ServerProcess


def answer(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"x"), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def constant(text: str) -> dict[str, str]:
    return {
        "h.py": f"def handle(data, context):\n    return None if data is None else ['{text}']\n"
    }


def wait_for(url: str, expected: bytes, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while answer(url) != (200, expected):
        assert time.monotonic() < deadline, answer(url)
        time.sleep(0.2)


def test_changed_and_new_archives_are_served_without_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = write_mar(store, "m", constant("one"), "h.py")
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: {store}\nserver:\n  repository_poll_s: 0.2\n")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    with ServerProcess(["-c", str(config)], env=env) as server:
        url = f"{server.http_url}/predictions/m"
        wait_for(url, b"one")
        before = archive.stat().st_mtime_ns
        write_mar(store, "m", constant("two"), "h.py")
        os.utime(archive, ns=(before + 10**9, before + 10**9))  # a coarse clock still sees it
        wait_for(url, b"two")
        write_mar(store, "added", constant("three"), "h.py")
        wait_for(f"{server.http_url}/predictions/added", b"three")
        archive.unlink()  # a removed archive's model is unloaded
        deadline = time.monotonic() + 30
        while answer(url)[0] != 404:
            assert time.monotonic() < deadline, answer(url)
            time.sleep(0.2)
        assert answer(f"{server.http_url}/predictions/added") == (200, b"three")
