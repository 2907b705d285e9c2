"""Each balancer alone: exact pick sequences, distributions, reaction to outcomes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

import dl_inference
from dl_inference.kernel.plugins import PluginHost
from dl_inference_balancers import (
    DynamicWeightedRoundRobin,
    LeastRequest,
    PeakEwma,
    RandomBalancer,
    RoundRobin,
)


@dataclass(eq=False)
class FakeNode:
    """A NodeView: what the kernel shows a balancer of one node."""

    address: str
    weight: int = 100
    in_flight: int = 0
    slow_start_factor: float = 1.0


SUCCESS = dl_inference.Outcome.SUCCESS
FAILURE = dl_inference.Outcome.FAILURE
REJECTED = dl_inference.Outcome.REJECTED


def picks(balancer: dl_inference.Balancer, nodes: list[FakeNode], n: int) -> list[str]:
    return [balancer.pick(nodes).address for _ in range(n)]


def shares(names: list[str]) -> dict[str, float]:
    counts = Counter(names)
    return {name: count / len(names) for name, count in counts.items()}


def test_plugin_registers_every_balancer_through_the_entry_point(host: PluginHost) -> None:
    info = next(p for p in host.plugins if p.distribution == "dl-inference-balancers")
    assert info.status == "loaded", info.error
    assert info.registers["balancers"] == [
        "dynamic_weighted_round_robin",
        "least_request",
        "peak_ewma",
        "random",
        "round_robin",
    ]
    assert host.balancer("dynamic_weighted_round_robin") is DynamicWeightedRoundRobin


# -- dynamic weighted round robin (the seed's algorithm) ------------------------------------


def test_dwrr_smooth_sequence_for_static_weights() -> None:
    nodes = [FakeNode("a", 5), FakeNode("b", 1), FakeNode("c", 1)]
    balancer = DynamicWeightedRoundRobin()
    # nginx's smooth WRR: the heavy node is interleaved, not sent in a burst of five.
    assert picks(balancer, nodes, 14) == list("aabacaa") * 2


def test_dwrr_does_not_send_everything_to_the_first_node() -> None:
    # The seed left effective weights at 0, so the first node took every request.
    nodes = [FakeNode("a", 1), FakeNode("b", 1), FakeNode("c", 1)]
    assert picks(DynamicWeightedRoundRobin(), nodes, 6) == list("abcabc")


def test_dwrr_failure_halves_and_success_recovers_half_the_distance_rounding_up() -> None:
    a, b = FakeNode("a", 4), FakeNode("b", 2)
    balancer = DynamicWeightedRoundRobin()
    sequence = [balancer.pick([a, b]).address]  # a
    balancer.observe(a, FAILURE, 0.01)
    assert balancer.effective_weight(a) == 2
    sequence += picks(balancer, [a, b], 2)  # b, a
    balancer.observe(a, SUCCESS, 0.01)
    assert balancer.effective_weight(a) == 3  # 2 + ceil((4 - 2) / 2)
    sequence += picks(balancer, [a, b], 2)  # b, a
    balancer.observe(a, SUCCESS, 0.01)
    assert balancer.effective_weight(a) == 4  # 3 + ceil(1 / 2)
    sequence += picks(balancer, [a, b], 1)  # a
    assert sequence == list("ababaa")


def test_dwrr_effective_weight_never_drops_below_one_and_rejections_do_not_count() -> None:
    node = FakeNode("a", 100)
    balancer = DynamicWeightedRoundRobin()
    for expected in (50, 25, 12, 6, 3, 1, 1, 1):
        balancer.observe(node, FAILURE, 0.0)
        assert balancer.effective_weight(node) == expected
    balancer.observe(node, REJECTED, 0.0)
    assert balancer.effective_weight(node) == 1
    recovered = []
    for _ in range(8):
        balancer.observe(node, SUCCESS, 0.0)
        recovered.append(balancer.effective_weight(node))
    assert recovered == [51, 76, 88, 94, 97, 99, 100, 100]


def test_dwrr_failing_node_gets_less_traffic_until_it_recovers() -> None:
    nodes = [FakeNode("a", 100), FakeNode("b", 100)]
    balancer = DynamicWeightedRoundRobin()
    for _ in range(3):
        balancer.observe(nodes[0], FAILURE, 0.0)  # a: 100 -> 12
    share = shares(picks(balancer, nodes, 1120))
    assert share["a"] == pytest.approx(12 / 112, abs=0.002)


@pytest.mark.parametrize("weights", [(100, 50, 25), (1, 2, 3, 4), (7, 1)])
def test_dwrr_distribution_matches_weights(weights: tuple[int, ...]) -> None:
    nodes = [FakeNode(f"n{i}", w) for i, w in enumerate(weights)]
    share = shares(picks(DynamicWeightedRoundRobin(), nodes, 10_000))
    total = sum(weights)
    for node in nodes:
        assert share[node.address] == pytest.approx(node.weight / total, abs=0.02)


def test_dwrr_slow_start_scales_a_warming_node() -> None:
    nodes = [FakeNode("a", 100), FakeNode("b", 100, slow_start_factor=0.25)]
    share = shares(picks(DynamicWeightedRoundRobin(), nodes, 10_000))
    assert share["b"] == pytest.approx(25 / 125, abs=0.02)


def test_dwrr_lowered_configured_weight_caps_the_effective_weight() -> None:
    node = FakeNode("a", 100)
    balancer = DynamicWeightedRoundRobin()
    balancer.pick([node])
    node.weight = 10
    assert balancer.effective_weight(node) == 10


# -- round robin and random -----------------------------------------------------------------


def test_round_robin_rotates_ignoring_weights() -> None:
    nodes = [FakeNode("a", 100), FakeNode("b", 1), FakeNode("c", 5)]
    assert picks(RoundRobin(), nodes, 7) == list("abcabca")


def test_random_is_weighted_and_reproducible_with_a_seed() -> None:
    nodes = [FakeNode("a", 60), FakeNode("b", 30), FakeNode("c", 10)]
    first = picks(RandomBalancer(seed=7), nodes, 10_000)
    assert first == picks(RandomBalancer(seed=7), nodes, 10_000)
    share = shares(first)
    assert share["a"] == pytest.approx(0.6, abs=0.02)
    assert share["b"] == pytest.approx(0.3, abs=0.02)
    assert share["c"] == pytest.approx(0.1, abs=0.02)


# -- least request (P2C on in-flight) -------------------------------------------------------


def test_least_request_spreads_evenly_when_idle() -> None:
    nodes = [FakeNode(name) for name in "abcd"]
    share = shares(picks(LeastRequest(seed=1), nodes, 10_000))
    for name in "abcd":
        assert share[name] == pytest.approx(0.25, abs=0.02)


def test_least_request_avoids_the_busy_node() -> None:
    nodes = [FakeNode("a"), FakeNode("b"), FakeNode("c", in_flight=10)]
    share = shares(picks(LeastRequest(seed=2), nodes, 9_000))
    # c only wins when drawn against itself, which P2C never does: it gets nothing.
    assert "c" not in share
    assert share["a"] == pytest.approx(0.5, abs=0.02)


def test_least_request_simulated_load_follows_service_speed() -> None:
    """Calls that finish slower on one node keep it busier, so it gets fewer new calls."""
    nodes = [FakeNode("fast"), FakeNode("slow")]
    balancer = LeastRequest(seed=3)
    finishing: list[tuple[int, FakeNode]] = []
    counts: Counter[str] = Counter()
    for tick in range(5_000):
        for due, node in [item for item in finishing if item[0] <= tick]:
            node.in_flight -= 1
            finishing.remove((due, node))
        for _ in range(2):  # two arrivals per tick
            node = balancer.pick(nodes)
            node.in_flight += 1
            counts[node.address] += 1
            finishing.append((tick + (1 if node.address == "fast" else 4), node))
    assert counts["fast"] > 2 * counts["slow"]


# -- peak EWMA ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_peak_ewma_jumps_to_peaks_and_decays_towards_fast_answers() -> None:
    clock = Clock()
    balancer = PeakEwma(decay_s=10.0, clock=clock)
    node = FakeNode("a")
    balancer.observe(node, SUCCESS, 0.010)
    assert balancer.cost(node) == pytest.approx(0.010)
    clock.now = 1.0
    balancer.observe(node, SUCCESS, 0.200)  # slower: taken at once
    assert balancer.cost(node) == pytest.approx(0.200)
    clock.now = 11.0  # one decay constant later, a fast answer pulls 63% of the way
    balancer.observe(node, SUCCESS, 0.010)
    assert balancer.cost(node) == pytest.approx(0.010 + 0.190 * 0.36788, rel=1e-3)
    balancer.observe(node, REJECTED, 5.0)  # client errors say nothing about speed
    assert balancer.cost(node) == pytest.approx(0.010 + 0.190 * 0.36788, rel=1e-3)


def test_peak_ewma_penalises_fast_failures() -> None:
    balancer = PeakEwma(failure_penalty_s=1.0, clock=Clock())
    node = FakeNode("a")
    balancer.observe(node, FAILURE, 0.001)
    assert balancer.cost(node) == pytest.approx(1.0)


def test_peak_ewma_sends_less_to_the_slow_node() -> None:
    clock = Clock()
    nodes = [FakeNode("a"), FakeNode("b"), FakeNode("slow")]
    balancer = PeakEwma(seed=5, clock=clock)
    latency = {"a": 0.01, "b": 0.01, "slow": 0.10}
    counts: Counter[str] = Counter()
    for i in range(3_000):
        clock.now = i * 0.01
        node = balancer.pick(nodes)
        counts[node.address] += 1
        balancer.observe(node, SUCCESS, latency[node.address])
    assert counts["slow"] < 0.1 * 3_000
    assert counts["a"] == pytest.approx(counts["b"], rel=0.1)


def test_peak_ewma_rejects_a_bad_option() -> None:
    with pytest.raises(ValueError, match="decay_s"):
        PeakEwma(decay_s=0)
