"""A protocol's own management API on the management listener (Protocol.management_routes),
in process: its routes answer behind the management token in the protocol's error format;
ModelControl's resolve_path keeps client paths inside the roots, load_folder loads a
prepared folder with notes, annotate replaces them, unload drops them; a route not bound
with control.http_handler, one the kernel's own routes take, or a gRPC service not bound
with control.grpc_service stops the start."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from dl_inference import Call, ModelControl, PermissionDenied, PluginError, Protocol, RuntimeView
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.server.management import ManagementService
from dl_inference.testing import write_python_model
from tests.test_request_hooks import ADD_ONE, CONFIG, make_runtime

TOKEN = "a-management-token-for-tests"


def error_body(error: BaseException, message: str, status: int) -> web.Response:
    return web.json_response({"problem": message, "code": status}, status=status)


class Probe(Protocol):
    """``GET /probe/{model}``: the model's notes; ``POST /probe/{model}?path=``: loads the
    folder ``path`` names (a client's path: resolve_path first) with notes."""

    name = "probe"

    def management_routes(self, runtime: RuntimeView, control: ModelControl):
        async def notes(request: web.Request, call: Call) -> web.Response:
            return web.json_response(control.notes(request.match_info["model"]))

        async def load(request: web.Request, call: Call) -> web.Response:
            folder = control.resolve_path(request.query["path"])
            name = request.match_info["model"]
            await control.load_folder(name, folder, {"max_batch_size": 4}, {"from": "probe"})
            return web.json_response(control.notes(name))

        return [
            web.get("/probe/{model}", control.http_handler("GET /probe", notes, error_body)),
            web.post("/probe/{model}", control.http_handler("POST /probe", load, error_body)),
        ]


class Unguarded(Protocol):
    name = "unguarded"

    def management_routes(self, runtime: RuntimeView, control: ModelControl):
        async def open_door(request: web.Request) -> web.Response:
            return web.Response()

        return [web.get("/open", open_door)]


class Clashing(Protocol):
    name = "clashing"

    def management_routes(self, runtime: RuntimeView, control: ModelControl):
        async def index(request: web.Request, call: Call) -> web.Response:
            return web.Response()

        return [web.post("/v2/repository/index", control.http_handler("x", index, error_body))]


class UnguardedGrpc(Protocol):
    name = "unguarded_grpc"

    def management_grpc_handlers(self, runtime: RuntimeView, control: ModelControl):
        return [grpc.method_handlers_generic_handler("probe.Open", {})]


async def service_for(tmp_path: Path, protocol: Protocol) -> ManagementService:
    runtime = await make_runtime(tmp_path / "models")
    config = ServerConfig.model_validate(
        {
            "model_repository": str(tmp_path / "models"),
            "management": {"enabled": True, "grpc_port": 0, "http_port": 0},
        }
    )

    async def changed() -> None:
        pass

    service = ManagementService(config, runtime.models, runtime, changed, None, [protocol])
    runtime.management = service
    return service


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLI_MANAGEMENT_TOKEN", TOKEN)


async def test_protocol_routes_answer_behind_the_token(tmp_path: Path) -> None:
    service = await service_for(tmp_path, Probe())
    write_python_model(tmp_path / "models", "wrapped", ADD_ONE, CONFIG)
    write_python_model(tmp_path / "outside", "evil", ADD_ONE, CONFIG)
    await service.start()
    base = f"http://{service.http_address}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"authorization": "Bearer wrong"}):
                async with session.get(f"{base}/probe/add_one", headers=headers) as reply:
                    assert reply.status == 401
                    assert reply.headers["WWW-Authenticate"] == "Bearer"
                    assert (await reply.json())["code"] == 401  # the protocol's format
            async with session.get(f"{base}/probe/add_one", headers=auth) as reply:
                assert (reply.status, await reply.json()) == (200, {})
            # A client's path outside the roots: refused before anything is read.
            outside = tmp_path / "outside" / "evil"
            async with session.post(
                f"{base}/probe/evil", params={"path": str(outside)}, headers=auth
            ) as reply:
                assert reply.status == 403
            async with session.post(
                f"{base}/probe/renamed", params={"path": "wrapped"}, headers=auth
            ) as reply:
                assert (reply.status, await reply.json()) == (200, {"from": "probe"})
        runtime = service.runtime
        assert runtime.model_ready("renamed")
        [version] = runtime.model_versions("renamed")
        assert version.backend.config.max_batch_size == 4  # the overrides applied
        await service.annotate("renamed", {"counts": [1, 2]})
        assert service.notes("renamed") == {"counts": [1, 2]}
        assert service._journal["renamed"][1]["notes"] == {"counts": [1, 2]}
        await service.unload("renamed")
        assert service.notes("renamed") == {}
        with pytest.raises(PermissionDenied):
            service.resolve_path("../outside/evil")
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("protocol", "words"),
    [
        (Unguarded(), "not bound with control.http_handler"),
        (Clashing(), "cannot be added"),
        (UnguardedGrpc(), "not bound with control.grpc_service"),
    ],
)
async def test_a_route_without_the_guard_or_on_a_taken_path_stops_the_start(
    tmp_path: Path, protocol: Protocol, words: str
) -> None:
    service = await service_for(tmp_path, protocol)
    with pytest.raises(PluginError, match=words):
        await service.start()
    await service.stop()
