"""Lifecycle and configuration hooks, run by a real (in-process) server."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dl_inference import ConfigError, hookimpl
from dl_inference.kernel.config import parse_server_config
from dl_inference.kernel.plugins import PluginHost
from dl_inference.server.composition import Server
from dl_inference.testing import write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs):
            return {"y": inputs["x"] + 1}
"""


def plugin(name: str, **hooks: Any) -> EntryPoint:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    sys.modules[name] = module
    return EntryPoint(name=name, value=name, group="dl_inference")


async def test_started_and_stopping_see_the_listening_server(tmp_path: Path) -> None:
    seen: list[tuple[str, Any]] = []

    def dli_server_started(server: Any) -> None:
        seen.append(("started", server.grpc_address))

    def dli_server_stopping(server: Any) -> None:
        seen.append(("stopping", server.runtime.draining))

    write_python_model(tmp_path, "m", ADD_ONE)
    config = parse_server_config(
        {
            "model_repository": str(tmp_path),
            "server": {"grpc": {"host": "127.0.0.1", "port": 0}, "http": {"enabled": False}},
        }
    )
    host = PluginHost(
        entry_points=[
            plugin(
                "lifecycle_plugin",
                dli_server_started=dli_server_started,
                dli_server_stopping=dli_server_stopping,
            )
        ]
    ).load()
    server = Server(config, host)
    server.prepare()
    await server.start()
    assert seen == [("started", server.grpc_address)]
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="m"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await server.stop()
    assert seen[-1] == ("stopping", True)  # told once draining has begun


def test_configure_hands_each_plugin_its_section() -> None:
    received: dict[str, Any] = {}

    def dli_configure(settings: dict[str, Any]) -> None:
        if "limit" in settings and not isinstance(settings["limit"], int):
            raise ConfigError("plugin_settings.cfg_plugin.limit: give a whole number")
        received.update(settings)

    host = PluginHost(entry_points=[plugin("cfg_plugin", dli_configure=dli_configure)]).load()
    host.configure({"cfg_plugin": {"limit": 3}})
    assert received == {"limit": 3}
    with pytest.raises(ConfigError, match="give a whole number"):
        host.configure({"cfg_plugin": {"limit": "many"}})
    with pytest.raises(ConfigError, match=r"plugin_settings\.cfg_plugn: no loaded plugin"):
        host.configure({"cfg_plugn": {}})
