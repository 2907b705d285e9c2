"""TorchServe's management API side by side with the real TorchServe 0.12: one model store of
archives made by TorchServe's own ``torch-model-archiver``, served by ``torchserve`` and by
``dl-inference serve`` (the dl-inference-torchserve plugin, management enabled); the same
sequence of management calls (list and paging, register, describe, scale, set-default,
unregister, and the errors of each) gets the same status codes and JSON bodies, key order
included.

Both start with one archive of the store served (``served.mar``); the others are copied into
the store afterwards and registered through the API (TorchServe registers from its store
at call time; dl-inference's ``load_models=served.mar`` keeps its repository poll from
serving them on its own). TorchServe runs without token auth, dl-inference with its
management token (TorchServe's key becomes ``Authorization: Bearer``).

Fields that must differ are normalised, each for a stated reason (``_normalise``); the
differences dl-inference chose (bad numbers are 400) are asserted as such at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dl_inference.testing import ServerProcess

from .torchserve import TorchServeServer, archive, skip_without_torchserve

TOKEN = "torchserve-side-by-side-token"
# Which archive version ran: set-default must change what /predictions/<model> runs.
HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [{"version": context.manifest["model"]["modelVersion"]} for _ in data]
"""

# (method, path) sent to both management listeners, in this order; each answer compared.
SEQUENCE = [
    ("GET", "/models"),
    # Start-up worker counts differ (TorchServe: one worker per core; dl-inference: the
    # model's instances): scale both to one first, then they describe alike.
    ("PUT", "/models/served?min_worker=1&max_worker=1&synchronous=true"),
    ("GET", "/models/served"),
    ("GET", "/models/served/all"),
    ("POST", "/models"),
    ("POST", "/models?url="),
    ("POST", "/models?url=missing.mar"),
    ("POST", "/models?url=../outside.mar"),
    ("POST", "/models?url=/etc/passwd"),
    ("POST", "/models?url=http://127.0.0.1:9/m.mar"),
    ("POST", "/models?url=echo.mar&initial_workers=1&synchronous=true"),
    ("POST", "/models?url=echo.mar&initial_workers=1&synchronous=true"),
    ("POST", "/models?url=echo2.mar&initial_workers=1&synchronous=true"),
    (
        "POST",
        "/models?url=other.mar&model_name=renamed&batch_size=4&max_batch_delay=50"
        "&initial_workers=1&synchronous=true",
    ),
    ("GET", "/models"),
    ("GET", "/models/"),
    ("GET", "/models?limit=1"),
    ("GET", "/models?limit=1&next_page_token=1"),
    ("GET", "/models?limit=2&next_page_token=2"),
    # The page that ends at the last model still has a nextPageToken on TorchServe.
    ("GET", "/models?limit=3"),
    ("GET", "/models?limit=2&next_page_token=1"),
    ("GET", "/models?limit=0"),
    ("GET", "/models?limit=abc&next_page_token=xyz"),
    ("GET", "/models?next_page_token=10"),
    ("GET", "/models/echo"),
    ("GET", "/models/echo/all"),
    ("GET", "/models/echo/2.0"),
    ("GET", "/models/echo/3.0"),
    ("GET", "/models/nope"),
    ("GET", "/models/nope/all"),
    ("GET", "/models/renamed"),
    ("PUT", "/models/echo/2.0?min_worker=1&max_worker=3&synchronous=true"),
    ("GET", "/models/echo/2.0"),
    ("PUT", "/models/echo?min_worker=3&max_worker=1"),
    ("PUT", "/models/echo/9.9?min_worker=1"),
    ("PUT", "/models/nope?min_worker=1"),
    ("PUT", "/models/echo/2.0/set-default"),
    ("GET", "/models/echo"),
    ("GET", "/models"),
    ("PUT", "/models/echo/9.9/set-default"),
    ("PUT", "/models/nope/1.0/set-default"),
    ("DELETE", "/models/echo"),
    ("DELETE", "/models/echo/2.0"),
    ("DELETE", "/models/echo/9.9"),
    ("DELETE", "/models/nope"),
    ("PATCH", "/models"),
    ("POST", "/models/echo"),
    ("DELETE", "/models/echo/1.0"),
    ("GET", "/models/echo/all"),
    ("DELETE", "/models/echo"),
    ("GET", "/models/echo"),
    ("DELETE", "/models/renamed"),
    ("GET", "/models"),
]


def call(base: str, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _normalise(answer: Any) -> Any:
    """What must differ between two servers, made equal; everything else is compared."""
    if isinstance(answer, list):
        return [_normalise(item) for item in answer]
    if not isinstance(answer, dict):
        return answer
    found = {key: _normalise(value) for key, value in answer.items()}
    for worker in found.get("workers", []):
        # Worker ids: TorchServe numbers its worker processes across models (9000, 9001,
        # ...); dl-inference names a model's instances. Start times and pids are the
        # processes' own; memoryUsage is what TorchServe measured of its worker process.
        for key in ("id", "startTime", "pid", "memoryUsage"):
            if key in worker:
                worker[key] = f"<{key}>"
    if found.get("type") == "DownloadArchiveException":
        # TorchServe tried to download (and failed: nothing listens there); dl-inference
        # never downloads and says so after TorchServe's words.
        found["message"] = found["message"].split(" (this server")[0]
    return found


@dataclass
class Pair:
    theirs: TorchServeServer
    ours: ServerProcess
    store: Path

    @property
    def ours_management(self) -> str:
        found = re.search(r"^Management HTTP listening on (\S+)$", self.ours.output(), re.M)
        assert found, self.ours.output()
        return f"http://{found.group(1)}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    skip_without_torchserve()
    work = tmp_path_factory.mktemp("torchserve-management")
    handler = work / "handler.py"
    handler.write_text(textwrap.dedent(HANDLER))
    made = work / "made"
    for name, version, file in [
        ("served", "1.0", "served"),
        ("echo", "1.0", "echo"),
        ("echo", "2.0", "echo2"),
        ("other", "1.0", "other"),
    ]:
        built = archive(made / file, name, handler, version=version)
        shutil.move(built, made / f"{file}.mar")
    store = work / "store"
    store.mkdir()
    shutil.copy(made / "served.mar", store)
    (work / "config.properties").write_text("load_models=served.mar\n")
    (work / "server.yaml").write_text(
        f"model_repository: {store}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
        "plugin_settings:\n"
        f"  torchserve: {{config_properties: {work / 'config.properties'}}}\n"
    )
    try:
        theirs = TorchServeServer(store, work / "torchserve").start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.skip(f"the TorchServe reference server did not start: {exc}")
    try:
        env = {"DLI_MANAGEMENT_TOKEN": TOKEN, "DLI_TORCHSERVE_CACHE": str(work / "cache")}
        with ServerProcess(["-c", str(work / "server.yaml")], env=env) as ours:
            # Registered through the API from here on, by both.
            for file in ("echo.mar", "echo2.mar", "other.mar"):
                shutil.copy(made / file, store)
            yield Pair(theirs, ours, store)
    finally:
        theirs.stop()


def test_the_same_management_calls_get_the_same_answers(pair: Pair) -> None:
    mismatches = []
    for method, path in SEQUENCE:
        theirs = call(pair.theirs.management_url, method, path)
        ours = call(pair.ours_management, method, path, TOKEN)
        expected = (theirs[0], json.dumps(_normalise(theirs[1]), indent=1))
        got = (ours[0], json.dumps(_normalise(ours[1]), indent=1))
        if got != expected:
            mismatches.append(f"{method} {path}\nTorchServe: {expected}\ndl-inference: {got}")
        if (method, path) == ("PUT", "/models/echo/2.0/set-default"):
            # The default version is what /predictions/<model> runs, on both.
            for base in (pair.theirs.http_url, pair.ours.http_url):
                request = urllib.request.Request(f"{base}/predictions/echo", b"x", method="POST")
                with urllib.request.urlopen(request, timeout=60) as reply:
                    assert json.loads(reply.read()) == {"version": "2.0"}, base
    assert not mismatches, "\n\n".join(mismatches)


def test_bad_numbers_are_400_here(pair: Pair) -> None:
    """The differences dl-inference chose, pinned: TorchServe fails a negative worker count
    with 500 and takes a non-number as the default; here both are 400 naming the
    parameter (docs: plugins/torchserve/README.md, Management API)."""
    path = "/models/served?min_worker=-1"
    assert call(pair.theirs.management_url, "PUT", path)[0] == 500
    status, body = call(pair.ours_management, "PUT", path, TOKEN)
    assert (status, body["type"]) == (400, "BadRequestException")
    assert "min_worker" in body["message"]
    path = "/models/served?min_worker=many"
    assert call(pair.theirs.management_url, "PUT", path)[0] == 202
    assert call(pair.ours_management, "PUT", path, TOKEN)[0] == 400
    # No token, no answer (TorchServe here runs without token auth).
    assert call(pair.ours_management, "GET", "/models")[0] == 401
