"""Gateway.apply: routes change at run time, keeping node state where the route is unchanged."""

from __future__ import annotations

from dl_inference.gateway import Gateway
from dl_inference.kernel.config import parse_server_config
from dl_inference.kernel.plugins import PluginHost


def routes(text: list[dict]) -> list:
    return parse_server_config({"routes": text}).routes


def route(model: str, balancer: str = "round_robin", *addresses: str) -> dict:
    nodes = [{"address": a, "weight": 10} for a in addresses or ("127.0.0.1:1",)]
    return {"model": model, "balancer": balancer, "nodes": nodes, "health": {"enabled": False}}


async def test_apply_keeps_adds_replaces_and_removes_routes() -> None:
    plugins = PluginHost().load()
    gateway = Gateway(routes([route("a"), route("b"), route("c")]), plugins)
    await gateway.start()
    a, b = gateway.routes["a"], gateway.routes["b"]
    a.nodes["127.0.0.1:1"].requests = 7  # state that must survive an unchanged route
    new = gateway.build_routes(
        routes(
            [
                route("a"),
                route("b", "round_robin", "127.0.0.1:1", "127.0.0.1:2"),
                route("d", "random"),
            ]
        )
    )
    changes = await gateway.apply(new)
    assert gateway.routes["a"] is a and a.nodes["127.0.0.1:1"].requests == 7
    assert gateway.routes["b"] is b and sorted(b.nodes) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert set(gateway.routes) == {"a", "b", "d"}
    assert sorted(changes) == ["b: nodes", "c: removed", "d: added"]
    changes = await gateway.apply(gateway.build_routes(routes([route("a", "random")])))
    assert gateway.routes["a"] is not a and gateway.routes["a"].balancer.name == "random"
    assert "a: replaced" in changes
    await gateway.stop()
