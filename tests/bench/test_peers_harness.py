"""bench/peers.py's arithmetic and command lines, without servers (the runs need the peers'
venvs; these pin what the script computes and sends)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    return load_script("peers")


def row(server: str, target: str, conc: int, rate: float, cores: float, **extra: Any) -> dict:
    """A loadgen.py row: ``wall_s`` seconds at ``rate`` req/s using ``cores`` of server CPU."""
    wall = 4.0
    return {
        "model": "mlp",
        "server": server,
        "config": f"{server} {target}",
        "client": "raw",
        "target": target,
        "conc": conc,
        "rep": 1,
        "ok": round(rate * wall),
        "wall_s": wall,
        "req_per_s": rate,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
        "server_cores": cores,
        **extra,
    }


def run_document(rows: list[dict], reps: int) -> dict:
    """A peers.json document holding ``rows``, as ``report`` reads it."""
    return {
        "rows": rows,
        "notes": [],
        "started": "s",
        "finished": "f",
        "machine": {"cores": 2},
        "args": {"duration": 4, "warmup": 1, "reps": reps},
    }


def test_cpu_per_request_is_the_server_trees_cpu_over_completed_requests(peers) -> None:
    # 0.5 cores for 4 s = 2 CPU seconds, over 2,000 requests: 1,000 us each.
    assert peers.cpu_us_per_request({"server_cores": 0.5, "wall_s": 4.0, "ok": 2000}) == (
        pytest.approx(1000.0)
    )
    assert peers.cpu_us_per_request({"server_cores": 1.2, "wall_s": 2.0, "ok": 4800}) == (
        pytest.approx(500.0)
    )
    # No server PID given to loadgen, or nothing completed: no figure rather than 0 or inf.
    assert peers.cpu_us_per_request({"server_cores": None, "wall_s": 4.0, "ok": 10}) is None
    assert peers.cpu_us_per_request({"server_cores": 0.5, "wall_s": 4.0, "ok": 0}) is None


def test_report_puts_cpu_per_request_beside_req_per_s_and_compares_with_triton(peers) -> None:
    rows = [
        row("dl-inference", "mlserver-grpc", 32, 800.0, 1.6),  # 2,000 us per request
        row("dl-inference", "mlserver-grpc", 32, 900.0, 1.8, rep=2),  # 2,000 us again
        row("triton", "mlserver-grpc", 32, 2000.0, 1.0),  # 500 us
        row("triton", "v2-rest", 32, 1000.0, 0.6),  # 600 us
        row("dl-inference", "v2-rest", 32, 1500.0, 0.75),  # 500 us
        row("dl-inference", "mlserver-grpc", 1, 400.0, 0.4),
        row("triton", "mlserver-grpc", 1, 250.0, 0.25),
    ]
    agg = {(r["server"], r["target"], r["conc"]): r for r in peers.aggregate(rows)}
    grpc = agg[("dl-inference", "mlserver-grpc", 32)]
    assert grpc["reps"] == 2 and grpc["req_per_s"] == 850.0
    assert grpc["server_cpu_us"] == pytest.approx(2000.0)
    assert agg[("triton", "v2-rest", 32)]["server_cpu_us"] == pytest.approx(600.0)
    doc = run_document(rows, reps=2)
    text = peers.report(doc, 32)
    assert "| CPU/req us |" in text
    assert "| triton | gRPC | triton mlserver-grpc | 250 | 2,000 | 2.00 | 500 us |" in text
    assert "| dl-inference | REST | dl-inference v2-rest | - | 1,500 | 2.00 | 500 us |" in text
    # MLP over gRPC: 850 / 2,000 = 0.42x against issue 17's 0.8x; REST 1.5x against 1.0x.
    assert "gRPC, C=32: dl-inference / Triton 0.42x req/s (target >= 0.8x: NOT met)" in text
    assert "REST, C=32: dl-inference / Triton 1.50x req/s (target >= 1x: met)" in text
    assert "server CPU per request 2,000 vs 500 us" in text
    vs = {item["protocol"]: item for item in doc["summary"]["mlp"]["vs_triton"]}
    assert vs["gRPC"]["ratio"] == pytest.approx(0.425)
    assert vs["gRPC"]["p50_c1"] == (1.0, 1.0)


def test_triton_block_starts_with_the_peers_recipe_and_loads_both_protocols(peers) -> None:
    matrix = peers.blocks({"triton"}, (1,), ("cnn",))
    assert [(b.batching, b.workers, b.threads, b.model) for b in matrix] == [
        ("off", 1, 1, "cnn"),
        ("on", 1, 1, "cnn"),
    ]
    on = matrix[1]
    assert on.targets == (("mlserver-grpc", "raw"), ("v2-rest", "binary"))
    recipes = Path("/peers")
    assert peers.server_command("/py", recipes, on) == [
        "/py",
        "/peers/servers.py",
        "start",
        "triton",
        "--batching",
        "on",
        "--workers",
        "1",
        "--threads",
        "1",
        "--model",
        "cnn",
    ]
    ports = peers.PEER_ADDRESSES["triton"]
    sent = {}
    for target, client in on.targets:
        command = peers.loadgen_command(
            "/py",
            recipes,
            on,
            target,
            client,
            port=peers.target_port(ports, target),
            pid=123,
            conc="1,32",
            duration=5.0,
            warmup=2.0,
            label="server=triton",
            rows_file=Path("/out/rows.jsonl"),
        )
        assert command[:2] == ["/py", "/peers/loadgen.py"]
        flags = dict(zip(command[2::2], command[3::2], strict=True))
        sent[target] = flags
        assert flags["--client"] == client and flags["--model"] == "cnn"
        assert flags["--server-pid"] == "123" and flags["--json"] == "/out/rows.jsonl"
    # servers.py's Triton listens for gRPC on 8081 and REST on 8080.
    assert sent["mlserver-grpc"]["--port"] == "8081"
    assert sent["v2-rest"]["--port"] == "8080"
    assert peers.target_port(peers.PEER_ADDRESSES["torchserve"], "ts-grpc") == 7070
    assert on.config("v2-rest", "binary") == (
        "V2 REST binary tensors, batching on (32, 2 ms), 1 torch thread(s)"
    )
    # dl-inference is loaded over the very same two clients.
    dli = peers.blocks({"dli"}, (0,), ("mlp",))
    assert {b.targets for b in dli} == {on.targets}


def test_the_triton_ratio_is_also_given_per_repetition(peers) -> None:
    # Each repetition runs both servers once: its ratio is a pair, and their spread is the
    # run's noise. Repetition 1: 900 / 1,000; 2: 1,100 / 1,000; 3: 1,050 / 1,000.
    rows = [
        row("dl-inference", "v2-rest", 32, rate, 0.5, rep=rep)
        for rep, rate in ((1, 900.0), (2, 1100.0), (3, 1050.0))
    ] + [row("triton", "v2-rest", 32, 1000.0, 0.5, rep=rep) for rep in (1, 2, 3)]
    # A gRPC row of Triton's, far faster, must not enter the REST pairs.
    rows.append(row("triton", "mlserver-grpc", 32, 5000.0, 0.5, rep=2))
    doc = run_document(rows, reps=3)
    text = peers.report(doc, 32)
    assert "dl-inference / Triton 1.05x req/s (target >= 1x: met)" in text
    assert "per repetition 0.90x, 1.10x, 1.05x (target met in 2 of 3)" in text
    (rest,) = [i for i in doc["summary"]["mlp"]["vs_triton"] if i["protocol"] == "REST"]
    assert [r["ratio"] for r in rest["per_rep"]] == pytest.approx([0.9, 1.1, 1.05])
