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


async def test_split_weights_and_group_nodes_change_in_place() -> None:
    """A reload of a split route's weights, mirror percent or groups' static nodes keeps
    the route, its groups and their nodes' state; another change replaces it."""
    plugins = PluginHost().load()

    def split(stable: int, canary_nodes: list[str], percent: float = 10) -> list:
        groups = [
            {"name": "stable", "weight": stable, "nodes": [{"address": "127.0.0.1:1"}]},
            {"name": "canary", "weight": 5, "nodes": [{"address": a} for a in canary_nodes]},
        ]
        mirror = {"percent": percent, "nodes": [{"address": "127.0.0.1:9"}]}
        entry = {"model": "m", "split": groups, "mirror": mirror, "health": {"enabled": False}}
        return routes([entry])

    gateway = Gateway(split(95, ["127.0.0.1:2"]), plugins)
    await gateway.start()
    route = gateway.routes["m"]
    stable = route.groups["stable"]
    stable.nodes["127.0.0.1:1"].requests = 7
    changes = await gateway.apply(
        gateway.build_routes(split(50, ["127.0.0.1:2", "127.0.0.1:3"], percent=50))
    )
    assert changes == ["m: weights and mirror percent and group nodes"]
    assert gateway.routes["m"] is route and route.groups["stable"] is stable
    assert stable.nodes["127.0.0.1:1"].requests == 7
    assert route.weights == {"stable": 50, "canary": 5}
    assert sorted(route.groups["canary"].nodes) == ["127.0.0.1:2", "127.0.0.1:3"]
    assert route.mirror is not None and route.mirror.config.percent == 50
    # Another balancer for the route: its groups are rebuilt.
    other = split(50, ["127.0.0.1:2"])
    other[0] = other[0].model_copy(update={"balancer": "random"})
    changes = await gateway.apply(gateway.build_routes(other))
    assert changes == ["m: replaced"] and gateway.routes["m"] is not route
    await gateway.stop()
