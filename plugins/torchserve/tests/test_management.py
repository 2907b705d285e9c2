"""TorchServe's management API (``/models``) on the management listener of a real
``dl-inference serve`` process: token, list / paging, register (from the model store, a
path inside the roots; URLs, paths outside the roots and bad numbers refused with
TorchServe's 4xx), describe, scale (recorded), set-default (what ``/predictions/<model>``
runs), unregister; the repository poll leaves registered versions alone; under
``--workers 2`` every worker answers the same."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _ts_archives import write_mar

from dl_inference.testing import ServerProcess

TOKEN = "torchserve-management-token"
# The handler answers which archive version ran and the batch size it was configured with.
VERSIONED = """
    def handle(data, context):
        if data is None:
            return None
        return [
            {
                "version": context.manifest["model"]["modelVersion"],
                "batch_size": context.system_properties["batch_size"],
            }
            for _ in data
        ]
"""
BROKEN = """
    def handle(data, context):
        raise RuntimeError("this handler never initializes")
"""


def call(
    base: str, method: str, path: str, token: str | None = TOKEN, body: bytes | None = None
) -> tuple[int, object]:
    """One request; (status, parsed JSON body)."""
    request = urllib.request.Request(base + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def management_url(server: ServerProcess) -> str:
    found = re.search(r"^Management HTTP listening on (\S+)$", server.output(), re.M)
    assert found, server.output()
    return f"http://{found.group(1)}"


def predict(server: ServerProcess, model: str) -> tuple[int, object]:
    return call(server.http_url, "POST", f"/predictions/{model}", None, b"x")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ts-management")
    store = base / "store"
    write_mar(store, "served", {"handler.py": VERSIONED}, "handler.py", version="1.0")
    write_mar(store, "echo", {"handler.py": VERSIONED}, "handler.py", version="1.0")
    write_mar(
        store, "echo", {"handler.py": VERSIONED}, "handler.py", version="2.0", file_name="echo2"
    )
    write_mar(
        store, "served", {"handler.py": VERSIONED}, "handler.py", version="2.0", file_name="served2"
    )
    write_mar(store, "broken", {"handler.py": BROKEN}, "handler.py")
    (store / "notes.txt").write_text("not an archive")
    outside = base / "outside"
    write_mar(outside, "evil", {"handler.py": VERSIONED}, "handler.py")
    (store / "linked.mar").symlink_to(outside / "evil.mar")
    (base / "config.properties").write_text("load_models=served.mar\n")
    (base / "server.yaml").write_text(
        f"model_repository: {store}\n"
        "server: {repository_poll_s: 0.2}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
        "plugin_settings:\n"
        f"  torchserve: {{config_properties: {base / 'config.properties'}}}\n"
    )
    return base


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[ServerProcess]:
    env = {"DLI_MANAGEMENT_TOKEN": TOKEN, "DLI_TORCHSERVE_CACHE": str(layout / "cache")}
    with ServerProcess(["-c", str(layout / "server.yaml")], env=env) as srv:
        yield srv


def test_every_route_needs_the_management_token(server: ServerProcess) -> None:
    base = management_url(server)
    for method, path in [
        ("GET", "/models"),
        ("POST", "/models?url=echo.mar"),
        ("GET", "/models/served"),
        ("PUT", "/models/served?min_worker=2"),
        ("PUT", "/models/served/1.0/set-default"),
        ("DELETE", "/models/served"),
    ]:
        for token in (None, "wrong-token"):
            status, body = call(base, method, path, token)
            assert status == 401, (method, path, body)
            assert body["type"] == "InvalidKeyException"  # type: ignore[index]
    # Nothing happened: still one model, one version.
    assert call(base, "GET", "/models")[1] == {
        "models": [{"modelName": "served", "modelUrl": "served.mar"}]
    }
    # Not on the inference listener.
    assert call(server.http_url, "GET", "/models", None)[0] == 404


def test_describe_a_model_served_at_start_up(server: ServerProcess) -> None:
    status, body = call(management_url(server), "GET", "/models/served")
    assert status == 200
    [described] = body  # type: ignore[misc]
    assert described["modelName"] == "served"
    assert described["modelVersion"] == "1.0"
    assert described["modelUrl"] == "served.mar"
    assert described["loadedAtStartup"] is True
    assert (described["minWorkers"], described["maxWorkers"]) == (1, 1)
    assert (described["batchSize"], described["maxBatchDelay"]) == (1, 100)
    [worker] = described["workers"]
    assert worker["status"] == "READY" and worker["pid"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", worker["startTime"])


def test_register_versions_set_default_and_unregister(server: ServerProcess, layout: Path) -> None:
    base = management_url(server)
    store = layout / "store"
    assert predict(server, "echo")[0] == 404
    status, body = call(base, "POST", "/models?url=echo.mar&initial_workers=1")
    assert (status, body) == (
        200,
        {"status": 'Model "echo" Version: 1.0 registered with 1 initial workers'},
    )
    assert predict(server, "echo") == (200, {"version": "1.0", "batch_size": 1})
    # Registering the same version again: TorchServe's conflict.
    assert call(base, "POST", "/models?url=echo.mar")[0] == 409
    # A second version, from an absolute path inside the store; the first stays the default.
    status, body = call(base, "POST", f"/models?url={store / 'echo2.mar'}")
    assert status == 200
    assert body == {
        "status": 'Model "echo" Version: 2.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model."
    }
    described = call(base, "GET", "/models/echo/all")[1]
    assert [d["modelVersion"] for d in described] == ["1.0", "2.0"]  # type: ignore[union-attr]
    assert call(base, "GET", "/models/echo")[1][0]["modelVersion"] == "1.0"  # type: ignore[index]
    assert predict(server, "echo")[1] == {"version": "1.0", "batch_size": 1}
    # No worker yet: TorchServe's 503 until the version is scaled up.
    status, body = call(server.http_url, "POST", "/predictions/echo/2.0", None, b"x")
    assert (status, body["type"]) == (503, "ServiceUnavailableException")  # type: ignore[index]
    assert body["message"].startswith('Model "echo" Version 2.0" has no worker')  # type: ignore[index]
    assert call(base, "GET", "/models/echo/2.0")[1][0]["workers"] == []  # type: ignore[index]
    assert call(base, "PUT", "/models/echo/2.0?min_worker=1&synchronous=true")[0] == 200
    assert call(server.http_url, "POST", "/predictions/echo/2.0", None, b"x")[1] == {
        "version": "2.0",
        "batch_size": 1,
    }
    # The repository poll (every 0.2 s) does not put the store's idea of "echo" back.
    time.sleep(1.0)
    assert len(call(base, "GET", "/models/echo/all")[1]) == 2  # type: ignore[arg-type]

    status, body = call(base, "PUT", "/models/echo/2.0/set-default")
    assert (status, body) == (
        200,
        {"status": 'Default version successfully updated for model "echo" to "2.0"'},
    )
    assert predict(server, "echo")[1] == {"version": "2.0", "batch_size": 1}
    assert call(base, "GET", "/models?limit=1&next_page_token=0")[1] == {
        "nextPageToken": "1",
        "models": [{"modelName": "echo", "modelUrl": str(store / "echo2.mar")}],
    }
    # The default version goes last.
    status, body = call(base, "DELETE", "/models/echo")
    assert (status, body["type"]) == (403, "InvalidModelVersionException")  # type: ignore[index]
    assert call(base, "DELETE", "/models/echo/1.0") == (
        200,
        {"status": 'Model "echo" unregistered'},
    )
    assert call(server.http_url, "POST", "/predictions/echo/1.0", None, b"x")[0] == 404
    assert call(base, "DELETE", "/models/echo") == (200, {"status": 'Model "echo" unregistered'})
    assert predict(server, "echo")[0] == 404
    assert call(base, "GET", "/models/echo")[0] == 404
    time.sleep(1.0)  # and the poll does not bring it back from the store
    assert call(base, "GET", "/models/echo")[0] == 404


def test_concurrent_registrations_of_one_model_keep_both_versions(
    server: ServerProcess,
) -> None:
    """Each registration reads the model's versions, then replaces the model: two at once
    must not lose one."""
    base = management_url(server)
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda url: call(base, "POST", f"/models?url={url}&initial_workers=1"),
                ["echo.mar", "echo2.mar"],
            )
        )
    assert [status for status, _ in answers] == [200, 200], answers
    described = call(base, "GET", "/models/echo/all")[1]
    assert sorted(d["modelVersion"] for d in described) == ["1.0", "2.0"]  # type: ignore[union-attr]
    default = call(base, "GET", "/models/echo")[1][0]["modelVersion"]  # type: ignore[index]
    assert call(base, "DELETE", f"/models/echo/{'2.0' if default == '1.0' else '1.0'}")[0] == 200
    assert call(base, "DELETE", "/models/echo")[0] == 200


def test_register_with_batching_and_a_new_name(server: ServerProcess) -> None:
    base = management_url(server)
    status, _ = call(
        base,
        "POST",
        "/models?url=echo.mar&model_name=batched&batch_size=4&max_batch_delay=50"
        "&initial_workers=2&synchronous=false",
    )
    assert status == 202
    [described] = call(base, "GET", "/models/batched")[1]  # type: ignore[misc]
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 50)
    assert (described["minWorkers"], described["maxWorkers"]) == (2, 2)
    assert described["modelUrl"] == "echo.mar"
    assert described["loadedAtStartup"] is False
    assert predict(server, "batched")[1] == {"version": "1.0", "batch_size": 4}
    assert call(base, "DELETE", "/models/batched")[0] == 200


def test_scale_is_recorded_and_shown(server: ServerProcess) -> None:
    base = management_url(server)
    assert call(base, "PUT", "/models/served?min_worker=2&max_worker=3") == (
        202,
        {"status": "Processing worker updates..."},
    )
    [described] = call(base, "GET", "/models/served/1.0")[1]  # type: ignore[misc]
    assert (described["minWorkers"], described["maxWorkers"]) == (2, 3)
    assert call(base, "PUT", "/models/served/1.0?min_worker=1&synchronous=true") == (
        200,
        {"status": "Workers scaled to 1 for model: served, version: 1.0"},
    )
    [described] = call(base, "GET", "/models/served")[1]  # type: ignore[misc]
    assert (described["minWorkers"], described["maxWorkers"]) == (1, 1)
    assert predict(server, "served")[0] == 200


def test_a_version_added_to_a_model_served_at_start_up_stays(server: ServerProcess) -> None:
    """The store's archives of "served" select one version (load_models=served.mar); one
    registered beside it is not taken away by the repository poll (every 0.2 s)."""
    base = management_url(server)
    assert call(base, "POST", "/models?url=served2.mar&initial_workers=1")[0] == 200
    time.sleep(1.0)
    described = call(base, "GET", "/models/served/all")[1]
    assert [(d["modelVersion"], d["loadedAtStartup"]) for d in described] == [  # type: ignore[union-attr]
        ("1.0", True),
        ("2.0", False),
    ]
    assert call(server.http_url, "POST", "/predictions/served/2.0", None, b"x")[0] == 200
    assert call(base, "DELETE", "/models/served/2.0")[0] == 200
    time.sleep(1.0)
    described = call(base, "GET", "/models/served/all")[1]
    assert [d["modelVersion"] for d in described] == ["1.0"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("POST", "/models", 400, "BadRequestException"),
        ("POST", "/models?url=", 404, "ModelNotFoundException"),
        ("POST", "/models?url=missing.mar", 404, "ModelNotFoundException"),
        ("POST", "/models?url=http://example.com/m.mar", 400, "DownloadArchiveException"),
        ("POST", "/models?url=HTTPS://example.com/m.mar", 400, "DownloadArchiveException"),
        ("POST", "/models?url=../outside/evil.mar", 404, "ModelNotFoundException"),
        ("POST", "/models?url=linked.mar", 404, "ModelNotFoundException"),
        ("POST", "/models?url=notes.txt", 400, "BadRequestException"),
        ("POST", "/models?url=echo.mar&batch_size=abc", 400, "BadRequestException"),
        ("POST", "/models?url=echo.mar&initial_workers=-1", 400, "BadRequestException"),
        ("POST", "/models?url=echo.mar&model_name=a/b", 400, "BadRequestException"),
        ("POST", "/models?url=broken.mar", 500, "InternalServerException"),
        ("GET", "/models/nope", 404, "ModelNotFoundException"),
        ("GET", "/models/served/9.9", 404, "ModelVersionNotFoundException"),
        ("PUT", "/models/nope?min_worker=1", 404, "ModelNotFoundException"),
        ("PUT", "/models/served?min_worker=-1", 400, "BadRequestException"),
        ("PUT", "/models/served?min_worker=x", 400, "BadRequestException"),
        ("PUT", "/models/served?min_worker=3&max_worker=1", 400, "BadRequestException"),
        ("PUT", "/models/served/9.9/set-default", 404, "ModelVersionNotFoundException"),
        ("PUT", "/models/nope/1.0/set-default", 404, "ModelNotFoundException"),
        ("DELETE", "/models/nope", 404, "ModelNotFoundException"),
        ("DELETE", "/models/served/9.9", 404, "ModelVersionNotFoundException"),
        ("PATCH", "/models", 405, "MethodNotAllowedException"),
        ("POST", "/models/served", 405, "MethodNotAllowedException"),
    ],
)
def test_bad_calls_get_torchserve_answers(
    server: ServerProcess, method: str, path: str, status: int, kind: str
) -> None:
    got, body = call(management_url(server), method, path)
    assert (got, body["type"]) == (status, kind), body  # type: ignore[index]
    assert body["code"] == status and body["message"]  # type: ignore[index]
    # Nothing was registered by a refused call (a model that failed to load is not kept).
    names = {m["modelName"] for m in call(management_url(server), "GET", "/models")[1]["models"]}  # type: ignore[index]
    assert names <= {"served"}, names


def test_every_worker_answers_the_same(tmp_path: Path) -> None:
    """Under --workers 2 a registration, a scale and a set-default reach both workers:
    describe answers the same whichever worker takes the call (SO_REUSEPORT spreads new
    connections)."""
    store = tmp_path / "store"
    write_mar(store, "echo", {"handler.py": VERSIONED}, "handler.py", version="1.0")
    write_mar(
        store, "echo", {"handler.py": VERSIONED}, "handler.py", version="2.0", file_name="echo2"
    )
    (tmp_path / "config.properties").write_text("load_models=echo.mar\n")
    (tmp_path / "server.yaml").write_text(
        f"model_repository: {store}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
        "plugin_settings:\n"
        f"  torchserve: {{config_properties: {tmp_path / 'config.properties'}}}\n"
    )
    env = {"DLI_MANAGEMENT_TOKEN": TOKEN, "DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    args = ["-c", str(tmp_path / "server.yaml"), "--workers", "2"]
    with ServerProcess(args, env=env) as server:
        base = management_url(server)
        assert call(base, "POST", "/models?url=echo2.mar")[0] == 200
        assert call(base, "PUT", "/models/echo/2.0?min_worker=3&max_worker=4")[0] == 202
        assert call(base, "PUT", "/models/echo/2.0/set-default")[0] == 200
        pids = set()
        for _ in range(30):  # a fresh connection each time
            [described] = call(base, "GET", "/models/echo")[1]  # type: ignore[misc]
            assert described["modelVersion"] == "2.0"
            assert (described["minWorkers"], described["maxWorkers"]) == (3, 4)
            pids.add(described["workers"][0]["pid"])
            assert predict(server, "echo")[1]["version"] == "2.0"  # type: ignore[index]
        assert len(pids) == 2, "the calls all reached one worker"
        # A worker started in place of a killed one replays the changes: it serves and
        # describes the same (the registered version, the counts, the default).
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        for _ in range(600):  # bounded wait for the replacement to answer
            try:
                status, body = call(base, "GET", "/models/echo/all")
            except (ConnectionError, urllib.error.URLError):
                continue  # a connection the kernel had queued for the killed process
            assert status == 200, body
            assert [d["modelVersion"] for d in body] == ["1.0", "2.0"]
            assert (body[1]["minWorkers"], body[1]["maxWorkers"]) == (3, 4)
            seen.add(body[0]["workers"][0]["pid"])
            if len(seen - {victim}) == 2:
                break
            time.sleep(0.1)
        assert len(seen - {victim}) == 2, seen
        for _ in range(8):
            assert call(base, "GET", "/models/echo")[1][0]["modelVersion"] == "2.0"  # type: ignore[index]
            assert predict(server, "echo")[1]["version"] == "2.0"  # type: ignore[index]
        assert len(_copies(tmp_path / "cache")) == 1
    # Stopped: the workers left standing removed the copy (whichever worker had made it).
    assert _copies(tmp_path / "cache") == [], server.output()


def _copies(cache: Path) -> list[str]:
    """The model folders of registered archives under the cache's managed/ folder."""
    managed = cache / "managed"
    return sorted(p.name for p in managed.iterdir()) if managed.is_dir() else []


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_registered_archives_copies_go_on_unregister_and_at_stop(tmp_path: Path) -> None:
    store, cache = tmp_path / "store", tmp_path / "cache"
    write_mar(store, "served", {"handler.py": VERSIONED}, "handler.py")
    write_mar(store, "echo", {"handler.py": VERSIONED}, "handler.py", version="1.0")
    write_mar(
        store, "echo", {"handler.py": VERSIONED}, "handler.py", version="2.0", file_name="echo2"
    )
    (tmp_path / "config.properties").write_text("load_models=served.mar\n")
    (tmp_path / "server.yaml").write_text(
        f"model_repository: {store}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
        "plugin_settings:\n"
        f"  torchserve: {{config_properties: {tmp_path / 'config.properties'}}}\n"
    )
    stored = _tree(store)
    (tmp_path / "beside-the-cache").mkdir()
    env = {"DLI_MANAGEMENT_TOKEN": TOKEN, "DLI_TORCHSERVE_CACHE": str(cache)}
    with ServerProcess(["-c", str(tmp_path / "server.yaml")], env=env) as server:
        base = management_url(server)
        unpacked = {p for p in cache.rglob("*") if "managed" not in p.parts}
        assert call(base, "POST", "/models?url=echo.mar&initial_workers=1")[0] == 200
        [first] = _copies(cache)
        assert call(base, "POST", "/models?url=echo2.mar&initial_workers=1")[0] == 200
        [second] = _copies(cache)  # the model's folder again, the previous one removed
        assert second != first
        assert call(base, "DELETE", "/models/echo/2.0")[0] == 200
        assert len(_copies(cache)) == 1
        assert call(base, "DELETE", "/models/echo")[0] == 200
        assert _copies(cache) == []  # unregistered: nothing left
        assert call(base, "POST", "/models?url=echo2.mar&initial_workers=1")[0] == 200
        assert predict(server, "echo")[1]["version"] == "2.0"  # type: ignore[index]
        assert len(_copies(cache)) == 1
    assert server.process is not None and server.process.returncode == 0, server.output()
    # Stopped: the copies are gone, and nothing else: the store, the unpacked archives of
    # the store, what lies beside the cache.
    assert not (cache / "managed").exists(), _copies(cache)
    assert {p for p in cache.rglob("*")} == unpacked
    assert _tree(store) == stored
    assert (tmp_path / "beside-the-cache").is_dir()


def test_grpc_management_service(server: ServerProcess, layout: Path) -> None:
    """``ManagementAPIsService`` on the management gRPC port: the token first, then the
    REST API's answers as ``msg`` and its refusals with TorchServe's codes and messages."""
    import grpc
    from dl_inference_torchserve._proto import torchserve_management_pb2 as mpb

    found = re.search(r"^Management gRPC listening on (\S+)$", server.output(), re.M)
    assert found, server.output()
    channel = grpc.insecure_channel(found.group(1))
    service = "/org.pytorch.serve.grpc.management.ManagementAPIsService"

    def rpc(method: str, request: object, token: str | None = TOKEN) -> object:
        stub = channel.unary_unary(
            f"{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=mpb.ManagementResponse.FromString,
        )
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return stub(request, metadata=metadata, timeout=60)

    with pytest.raises(grpc.RpcError) as refused:
        rpc("ListModels", mpb.ListModelsRequest(limit=10), None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:  # the token before the body is read
        channel.unary_unary(f"{service}/ListModels")(b"\x8a@\xe0", timeout=60)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    registered = rpc(
        "RegisterModel",
        mpb.RegisterModelRequest(url="echo.mar", initial_workers=1, synchronous=True),
    )
    assert registered.msg == 'Model "echo" Version: 1.0 registered with 1 initial workers'
    [described] = json.loads(rpc("DescribeModel", mpb.DescribeModelRequest(model_name="echo")).msg)
    assert (described["modelVersion"], described["modelUrl"]) == ("1.0", "echo.mar")
    with pytest.raises(grpc.RpcError) as refused:
        rpc("RegisterModel", mpb.RegisterModelRequest(url=str(layout / "outside" / "evil.mar")))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details().endswith(
        "\norg.pytorch.serve.archive.model.ModelNotFoundException"
    )
    with pytest.raises(grpc.RpcError) as refused:
        rpc("ScaleWorker", mpb.ScaleWorkerRequest(model_name="echo", min_worker=-1))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:  # an exception outside org.pytorch.serve.http
        rpc("RegisterModel", mpb.RegisterModelRequest(url="http://example.com/m.mar"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().endswith("\norg.pytorch.serve.archive.DownloadArchiveException")
    unregistered = rpc("UnregisterModel", mpb.UnregisterModelRequest(model_name="echo"))
    assert unregistered.msg == 'Model "echo" unregistered'
    assert predict(server, "echo")[0] == 404
