"""The management transports on the kernel's call path, in process: failures are answered
with their codes and logged at debug level with the method as called and the model named,
but they are not inference requests: not in ``dli_on_error`` nor ``dli_requests_total``."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
import structlog.testing

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


async def test_failures_are_answered_and_logged_but_not_counted_as_inference(management) -> None:
    service, runtime, seen = management
    with structlog.testing.capture_logs() as logs:
        await call_management_badly(service)
    assert runtime.model_ready("add_one")
    logged = [
        (e["protocol"], e["method"], e["model"], e["error"].split(":")[0])
        for e in logs
        if e["event"] == "call failed" and e["log_level"] == "debug"
    ]
    assert logged == [
        ("management", f"/{SERVICE}/RepositoryModelLoad", None, "InvalidInput"),
        ("management", f"/{SERVICE}/RepositoryIndex", None, "Unauthenticated"),
        ("management", "POST /v2/repository/models/{model}/load", "add_one", "InvalidInput"),
    ]
    assert seen == []
    assert failures(runtime, "management") == 0
    assert "dli_requests_total{" not in runtime.metrics.render().decode()


async def call_management_badly(service: ManagementService) -> None:
    """Three failing management calls (gRPC and HTTP) and two good ones."""
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
        # Good calls, not failures.
        async with session.post(f"{base}/unload", json={}, headers=headers) as reply:
            assert reply.status == 200, await reply.text()
        async with session.post(f"{base}/load", headers=headers) as reply:
            assert reply.status == 200, await reply.text()
