"""The management transports on the kernel's call path, in process: every failure reaches
``dli_on_error`` and the metrics once, with the method as called and the model it named."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest

from dl_inference import RequestContext
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.server.management import ManagementService
from tests.test_call_path import GARBAGE, failures, raw_call
from tests.test_request_hooks import make_runtime, plugin_module

TOKEN = "a-management-token-for-tests"
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture
async def management(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[tuple[str, str, str, str]] = []

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        model = ctx.request.model_name if ctx.request is not None else ""
        seen.append((ctx.protocol, ctx.method, model, type(error).__name__))

    runtime = await make_runtime(
        tmp_path, plugin_module("management_probe", dli_on_error=dli_on_error)
    )
    monkeypatch.setenv("DLI_MANAGEMENT_TOKEN", TOKEN)
    config = ServerConfig.model_validate(
        {
            "model_repository": str(tmp_path),
            "management": {"enabled": True, "grpc_port": 0, "http_port": 0},
        }
    )

    async def changed() -> None:
        pass

    service = ManagementService(config, runtime.models, runtime, changed)
    await service.start()
    yield service, runtime, seen
    await service.stop()


async def test_failures_reach_dli_on_error_and_metrics_once(management) -> None:
    service, runtime, seen = management
    token = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(service.grpc_address) as channel:
        load = raw_call(channel, f"/{SERVICE}/RepositoryModelLoad")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await load(GARBAGE, metadata=token)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_call(channel, f"/{SERVICE}/RepositoryIndex")(GARBAGE)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    base = f"http://{service.http_address}/v2/repository/models/add_one"
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/load", data=b"{", headers=headers) as reply:
            assert reply.status == 400
            assert "not valid JSON" in (await reply.json())["error"]
        # Good calls are not failures.
        async with session.post(f"{base}/unload", json={}, headers=headers) as reply:
            assert reply.status == 200, await reply.text()
        async with session.post(f"{base}/load", headers=headers) as reply:
            assert reply.status == 200, await reply.text()
    assert runtime.model_ready("add_one")
    assert seen == [
        ("management", f"/{SERVICE}/RepositoryModelLoad", "", "InvalidInput"),
        ("management", f"/{SERVICE}/RepositoryIndex", "", "Unauthenticated"),
        ("management", "POST /v2/repository/models/{model}/load", "add_one", "InvalidInput"),
    ]
    assert failures(runtime, "management") == 3
