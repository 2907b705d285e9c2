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

from .torchserve import (
    TorchServeServer,
    archive,
    grpc_management_stubs,
    skip_without_torchserve,
)
from .torchserve import call as http_call

TOKEN = "torchserve-side-by-side-token"
# Which archive version ran: set-default must change what /predictions/<model> runs.
HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [{"version": context.manifest["model"]["modelVersion"]} for _ in data]
"""
BROKEN = """
def handle(data, context):
    raise RuntimeError("this handler never initializes")
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
    # Registered with no worker (TorchServe's default): described without workers, its
    # predictions 503 until it is scaled up. PREDICT: a prediction on the inference port.
    ("POST", "/models?url=other.mar&model_name=idle"),
    ("GET", "/models/idle"),
    ("PREDICT", "/predictions/idle"),
    ("PREDICT", "/predictions/idle/1.0"),
    ("PUT", "/models/idle?min_worker=1&synchronous=true"),
    ("PREDICT", "/predictions/idle"),
    ("PUT", "/models/idle/1.0?min_worker=0&synchronous=true"),
    ("PREDICT", "/predictions/idle/1.0"),
    ("DELETE", "/models/idle"),
    ("DELETE", "/models/renamed"),
    ("GET", "/models"),
]


def call(
    base: str, method: str, path: str, token: str | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    """(status, the JSON answer): registering an archive starts its workers, hence 120 s."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    status, answer, _ = http_call(base, path, body or b"", headers, method, timeout=120)
    return status, json.loads(answer)


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
    broken = work / "broken.py"
    broken.write_text(textwrap.dedent(BROKEN))
    shutil.move(archive(made / "broken", "broken", broken), made / "broken.mar")
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
            for file in ("echo.mar", "echo2.mar", "other.mar", "broken.mar"):
                shutil.copy(made / file, store)
            yield Pair(theirs, ours, store)
    finally:
        theirs.stop()


def test_the_same_management_calls_get_the_same_answers(pair: Pair) -> None:
    mismatches = []
    for method, path in SEQUENCE:
        if method == "PREDICT":
            theirs = call(pair.theirs.http_url, "POST", path, None, b"x")
            ours = call(pair.ours.http_url, "POST", path, None, b"x")
        else:
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


def _grpc_answer(stub: Any, method: str, request: Any, token: str | None) -> tuple[str, Any]:
    """(status code name, msg parsed as JSON when it is JSON / the error's details)."""
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        reply = getattr(stub, method)(request, metadata=metadata, timeout=120)
    except grpc.RpcError as error:
        return error.code().name, error.details()
    try:
        return "OK", _normalise(json.loads(reply.msg))
    except ValueError:
        return "OK", reply.msg


def test_the_same_grpc_management_calls_get_the_same_answers(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """ManagementAPIsService, called with TorchServe's own client modules: the same codes,
    messages (TorchServe's message and Java exception name) and JSON."""
    import grpc

    pb, services = grpc_management_stubs(tmp_path_factory.mktemp("ts-management-stubs"))
    found = re.search(r"^Management gRPC listening on (\S+)$", pair.ours.output(), re.M)
    assert found
    theirs_stub = services.ManagementAPIsServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{pair.theirs.ports['grpcm']}")
    )
    ours_stub = services.ManagementAPIsServiceStub(grpc.insecure_channel(found.group(1)))
    sequence = [
        ("ListModels", pb.ListModelsRequest()),  # a limit of 0: an empty page on both
        ("ListModels", pb.ListModelsRequest(limit=10)),
        ("RegisterModel", pb.RegisterModelRequest()),
        ("RegisterModel", pb.RegisterModelRequest(url="missing.mar")),
        ("RegisterModel", pb.RegisterModelRequest(url="echo.mar", initial_workers=1)),
        ("RegisterModel", pb.RegisterModelRequest(url="echo2.mar", synchronous=True)),
        (
            "RegisterModel",
            pb.RegisterModelRequest(
                url="other.mar",
                model_name="renamed",
                batch_size=4,
                max_batch_delay=50,
                initial_workers=1,
                synchronous=True,
            ),
        ),
        ("ListModels", pb.ListModelsRequest(limit=2, next_page_token=1)),
        ("DescribeModel", pb.DescribeModelRequest(model_name="renamed")),
        ("DescribeModel", pb.DescribeModelRequest(model_name="echo", model_version="9.9")),
        ("DescribeModel", pb.DescribeModelRequest(model_name="nope")),
        ("ScaleWorker", pb.ScaleWorkerRequest(model_name="renamed", min_worker=1, max_worker=2)),
        ("ScaleWorker", pb.ScaleWorkerRequest(model_name="echo", min_worker=3, max_worker=1)),
        ("ScaleWorker", pb.ScaleWorkerRequest(model_name="nope", min_worker=1)),
        (
            "ScaleWorker",
            pb.ScaleWorkerRequest(
                model_name="renamed", model_version="1.0", min_worker=1, synchronous=True
            ),
        ),
        ("SetDefault", pb.SetDefaultRequest(model_name="echo", model_version="2.0")),
        ("SetDefault", pb.SetDefaultRequest(model_name="echo", model_version="9.9")),
        ("SetDefault", pb.SetDefaultRequest(model_name="nope", model_version="1.0")),
        ("SetDefault", pb.SetDefaultRequest(model_name="echo")),
        ("UnregisterModel", pb.UnregisterModelRequest(model_name="echo", model_version="9.9")),
        ("UnregisterModel", pb.UnregisterModelRequest(model_name="nope")),
        ("UnregisterModel", pb.UnregisterModelRequest(model_name="echo", model_version="1.0")),
        ("UnregisterModel", pb.UnregisterModelRequest(model_name="echo")),
        ("UnregisterModel", pb.UnregisterModelRequest(model_name="renamed")),
        ("ListModels", pb.ListModelsRequest(limit=10)),
    ]
    mismatches = []
    for method, request in sequence:
        theirs = _grpc_answer(theirs_stub, method, request, None)
        ours = _grpc_answer(ours_stub, method, request, TOKEN)
        if ours != theirs:
            mismatches.append(f"{method}({request})\nTorchServe: {theirs}\ndl-inference: {ours}")
    assert not mismatches, "\n\n".join(mismatches)
    # Where TorchServe 0.12 answers UNKNOWN with no message (a conflict, the default
    # version removed first), this server names the refusal.
    register = pb.RegisterModelRequest(url="served.mar")
    assert _grpc_answer(theirs_stub, "RegisterModel", register, None) == ("UNKNOWN", "")
    assert _grpc_answer(ours_stub, "RegisterModel", register, TOKEN) == (
        "FAILED_PRECONDITION",
        "Model version 1.0 is already registered for model served\n"
        "org.pytorch.serve.http.ConflictStatusException",
    )
    # No token, no answer.
    assert _grpc_answer(ours_stub, "ListModels", pb.ListModelsRequest(), None)[0] == (
        "UNAUTHENTICATED"
    )


def test_a_handler_that_does_not_load(pair: Pair) -> None:
    """Both answer 500 with TorchServe's words (here followed by the reason); TorchServe
    keeps the model registered (its workers failing), this server keeps nothing."""
    path = "/models?url=broken.mar&initial_workers=1&synchronous=true"
    theirs = call(pair.theirs.management_url, "POST", path)
    ours = call(pair.ours_management, "POST", path, TOKEN)
    message = "Failed to start workers for model broken version: 1.0"
    assert theirs == (500, {"code": 500, "type": "InternalServerException", "message": message})
    assert (ours[0], ours[1]["type"]) == (500, "InternalServerException")
    assert ours[1]["message"].startswith(f"{message} (")
    assert "this handler never initializes" in ours[1]["message"]
    assert call(pair.theirs.management_url, "GET", "/models/broken")[0] == 200
    assert call(pair.ours_management, "GET", "/models/broken", TOKEN)[0] == 404
    assert call(pair.theirs.management_url, "DELETE", "/models/broken")[0] == 200
