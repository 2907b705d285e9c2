"""``dl-inference bench`` against a real server in a subprocess, with each protocol."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dl_inference.cli import main
from dl_inference.testing import ServerProcess, free_port

SHORT = ["--duration", "0.4", "--warmup", "0.1"]
ROW_KEYS = {
    "mode",
    "concurrency",
    "rate",
    "processes",
    "duration_s",
    "requests",
    "errors",
    "req_per_s",
    "samples_per_s",
    "latency_ms",
    "error_messages",
}
DOC_KEYS = {
    "tool",
    "version",
    "started_at",
    "url",
    "protocol",
    "model",
    "model_version",
    "inputs",
    "batch_size",
    "duration_s",
    "warmup_s",
    "processes",
    "results",
}


def served_ok(srv: ServerProcess, model: str, protocol: str) -> float:
    """The server's own count of successful requests (Prometheus dli_requests_total)."""
    with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        labels = (f'model="{model}"', f'protocol="{protocol}"', 'status="OK"')
        if line.startswith("dli_requests_total{") and all(x in line for x in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "result.json"
    code = main(["bench", *args, "--json", str(out), "--quiet"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def check_rows(document: dict, count: int) -> None:
    assert set(document) == DOC_KEYS
    assert len(document["results"]) == count
    for row in document["results"]:
        assert set(row) == ROW_KEYS
        assert row["requests"] > 0, row
        assert row["errors"] == 0, row["error_messages"]
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["req_per_s"] == pytest.approx(row["requests"] / row["duration_s"])


def test_v2_grpc_closed_loop_json(server: ServerProcess, tmp_path: Path) -> None:
    before = served_ok(server, "dense", "v2")
    code, doc = bench(
        tmp_path,
        "--url",
        f"grpc://{server.grpc_address}",
        "--model",
        "dense",
        "--concurrency",
        "1,4",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 2)
    # Inputs came from the model's metadata: x FP32 [-1, 16] with the batch dimension 1.
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 16]}]
    assert [r["concurrency"] for r in doc["results"]] == [1, 4]
    # Every recorded success was a real success on the server (it also saw the warm-up).
    recorded = sum(r["requests"] for r in doc["results"])
    assert served_ok(server, "dense", "v2") - before >= recorded + 1


def test_v2_rest_with_batch_size(server: ServerProcess, tmp_path: Path) -> None:
    code, doc = bench(
        tmp_path,
        "--url",
        server.http_url,
        "--model",
        "dense",
        "--concurrency",
        "2",
        "--batch-size",
        "4",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 1)
    assert doc["batch_size"] == 4
    row = doc["results"][0]
    assert row["samples_per_s"] == pytest.approx(4 * row["req_per_s"])


@pytest.mark.parametrize(
    ("protocol", "plugin"),
    [("tfserving", "dl_inference_tfserving"), ("seldon", "dl_inference_seldon")],
)
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_other_protocols(
    server: ServerProcess, tmp_path: Path, protocol: str, plugin: str, transport: str
) -> None:
    if importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} (the {protocol} protocol) is not installed")
    url = f"grpc://{server.grpc_address}" if transport == "grpc" else server.http_url
    before = served_ok(server, "dense", protocol)
    code, doc = bench(
        tmp_path,
        "--url",
        url,
        "--protocol",
        protocol,
        "--model",
        "dense",
        "--concurrency",
        "2",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 1)
    assert served_ok(server, "dense", protocol) - before >= doc["results"][0]["requests"]


def test_open_loop_sends_on_schedule(server: ServerProcess, tmp_path: Path) -> None:
    code, doc = bench(
        tmp_path,
        "--url",
        f"grpc://{server.grpc_address}",
        "--model",
        "dense",
        "--rate",
        "50",
        "--duration",
        "0.4",
        "--warmup",
        "0",
    )
    assert code == 0
    check_rows(doc, 1)
    row = doc["results"][0]
    assert (row["mode"], row["rate"], row["concurrency"]) == ("open", 50.0, None)
    assert row["requests"] == 20  # 0.4 s at 50/s, every one answered


def test_several_processes_merge_samples(server: ServerProcess, tmp_path: Path) -> None:
    before = served_ok(server, "dense", "v2")
    code, doc = bench(
        tmp_path,
        "--url",
        f"grpc://{server.grpc_address}",
        "--model",
        "dense",
        "--concurrency",
        "3",
        "--processes",
        "2",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 1)
    assert doc["processes"] == 2 and doc["results"][0]["processes"] == 2
    assert served_ok(server, "dense", "v2") - before >= doc["results"][0]["requests"]


def test_input_file_and_given_inputs(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "pair.npz"
    np.savez(data, a=np.arange(6, dtype=np.int64).reshape(2, 3), b=np.ones((2, 3), np.int64))
    code, doc = bench(
        tmp_path,
        "--url",
        server.http_url,
        "--model",
        "pair",
        "--input-file",
        str(data),
        "--concurrency",
        "1",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 1)
    assert doc["inputs"] == [
        {"name": "a", "datatype": "INT64", "shape": [2, 3]},
        {"name": "b", "datatype": "INT64", "shape": [2, 3]},
    ]
    code, doc = bench(
        tmp_path,
        "--url",
        f"grpc://{server.grpc_address}",
        "--model",
        "pair",
        "--input",
        "a:INT64:5,3",
        "--input",
        "b:INT64:5,3",
        "--concurrency",
        "1",
        *SHORT,
    )
    assert code == 0
    check_rows(doc, 1)
    assert doc["batch_size"] == 5


def test_progress_and_table(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "--url",
            f"grpc://{server.grpc_address}",
            "--model",
            "dense",
            "--concurrency",
            "2",
            "--duration",
            "0.6",
            "--warmup",
            "0.3",
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    header, _rule, row = out.splitlines()[:3]
    assert header.split()[:3] == ["load", "req/s", "samples/s"] and "p99" in header
    assert re.match(r"c=2\s+[\d,]+\s+[\d,]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+\s+0$", row)
    assert "[1/1] c=2" in err  # the progress line
    assert re.search(r"c=2 +[\d,]+ req/s {2}p99 [\d.]+ ms {2}0 errors", err)


def test_plot(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "plot.png"
    code = main(
        [
            "bench",
            "--url",
            f"grpc://{server.grpc_address}",
            "--model",
            "dense",
            "--concurrency",
            "1,2",
            "--plot",
            str(png),
            "--quiet",
            *SHORT,
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    if importlib.util.find_spec("matplotlib") is None:
        assert "--plot needs matplotlib, which is not installed" in err
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://127.0.0.1:1"], "unknown scheme 'ftp'"),
        (["--url", "grpc://127.0.0.1"], "give a host and a port"),
        (["--input", "x:FP99:1,16"], "unknown datatype 'FP99'"),
        (["--protocol", "nope"], "no installed plugin provides protocol 'nope' (available: "),
        (["--option", "signature_name"], "--option 'signature_name': write KEY=VALUE"),
        (
            [
                "--input",
                "x:FP32:1,16",
                "--protocol",
                "v2",
                "--model",
                "dense",
                "--concurrency",
                "0",
            ],
            None,
        ),
    ],
)
def test_bad_arguments(
    server: ServerProcess,
    args: list[str],
    message: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = {"--url": f"grpc://{server.grpc_address}", "--model": "dense"}
    for i in range(0, len(args) - 1, 2):
        base.pop(args[i], None)
    argv = ["bench", *[x for kv in base.items() for x in kv], *args, *SHORT]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses --concurrency 0 itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert (message or "give one or more numbers >= 1") in err


def test_unknown_model_and_wrong_input(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"grpc://{server.grpc_address}"
    assert main(["bench", "--url", url, "--model", "nope", *SHORT]) == 2
    err = capsys.readouterr().err
    assert "model 'nope' is not served at" in err and "models served here: dense, pair" in err
    code = main(["bench", "--url", url, "--model", "dense", "--input", "z:FP32:1,16", *SHORT])
    assert code == 2
    err = capsys.readouterr().err
    assert "the first request for model 'dense'" in err and "no input named 'z'" in err
    # The server shrugged both off and keeps serving.
    assert (
        main(["bench", "--url", url, "--model", "dense", "--concurrency", "1", "--quiet", *SHORT])
        == 0
    )


def test_unreachable_url_exits_2_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dl_inference",
            "bench",
            "--url",
            f"grpc://127.0.0.1:{port}",
            "--model",
            "dense",
            "--input",
            "x:FP32:1,16",
            "--json",
            str(tmp_path / "r.json"),
            *SHORT,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot reach grpc://127.0.0.1:{port}" in result.stderr
    assert "is the server running" in result.stderr
    assert not (tmp_path / "r.json").exists()


PID_MODEL = """
    import os
    from dl_inference import PythonModel

    class Pid(PythonModel):
        def predict(self, inputs):
            with open(self.path.parent.parent / "pids.txt", "a") as log:
                log.write(f"{os.getpid()}\\n")
            return {"y": inputs["x"]}
"""


def test_channels_spread_load_over_worker_processes(tmp_path: Path) -> None:
    from dl_inference.testing import write_python_model

    repo = tmp_path / "models"
    write_python_model(
        repo,
        "pid",
        PID_MODEL,
        "inputs: [{name: x, datatype: FP32, shape: [2]}]\n"
        "outputs: [{name: y, datatype: FP32, shape: [2]}]\n",
    )
    with ServerProcess(["--model-repository", str(repo), "--workers", "2"]) as srv:
        code, doc = bench(
            tmp_path,
            "--url", f"grpc://{srv.grpc_address}", "--model", "pid",
            "--concurrency", "16", "--channels", "16", *SHORT,
        )  # fmt: skip
    assert code == 0
    check_rows(doc, 1)
    # 16 connections, kernel-balanced between the two workers: both served requests.
    pids = set((repo / "pids.txt").read_text().split())
    assert len(pids) == 2


def test_protocol_options_and_refusals(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for plugin in ("dl_inference_tfserving", "dl_inference_seldon"):
        if importlib.util.find_spec(plugin) is None:
            pytest.skip(f"{plugin} is not installed")
    url = f"grpc://{server.grpc_address}"
    # The protocol's own option reaches the server: an unknown signature is refused there.
    args = ["--url", url, "--protocol", "tfserving", "--model", "dense", "--concurrency", "1"]
    code, doc = bench(tmp_path, *args, "--option", "signature_name=serving_default", *SHORT)
    assert code == 0
    check_rows(doc, 1)
    assert main(["bench", *args, "--option", "signature_name=nope", *SHORT]) == 2
    assert "the first request for model 'dense'" in capsys.readouterr().err
    # Refused by the protocol before any load: an option it does not know, two tensors.
    assert main(["bench", *args, "--option", "colour=red", *SHORT]) == 2
    assert "--option colour: the tfserving protocol takes signature_name" in (
        capsys.readouterr().err
    )
    seldon = ["--url", url, "--protocol", "seldon", "--model", "pair", *SHORT]
    assert main(["bench", *seldon]) == 2
    assert "carries one tensor per request; this model takes 2 inputs (a, b)" in (
        capsys.readouterr().err
    )
