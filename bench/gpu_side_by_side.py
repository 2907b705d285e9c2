"""dl-inference vs Triton 2.51 with the model on the GPU, one client, server CPU per request.

Issue 17's GPU check, run by ``scripts/gpu_check.sh`` on a machine with an NVIDIA GPU (it
runs on CPU too, with ``--device cpu``, to check the script itself):

- models: bench/models.py's seeded MLP, small CNN and ResNet-18-like CNN (TorchScript);
- dl-inference: ``dl-inference serve`` with the ``pytorch`` backend on ``--device``
  (``max_batch_size: 32``, dynamic batching with a 2 ms queue delay);
- Triton: the ``tritonserver`` binary of ``--triton`` (the folder ``pytriton/tritonserver``
  of the ``nvidia-pytriton`` wheel, a CUDA build) with a python-backend model that runs the
  same TorchScript file on ``--device`` (one instance, max batch 32, dynamic batching
  2 ms); its stub finds torch through ``--triton-python``'s folder on ``PATH``;
- load: ``dl-inference bench`` (closed loop, one sample per request) against both, over V2
  gRPC and V2 REST with binary tensors, at each ``--conc``; one unrecorded warm-up run
  first, then the timed run;
- server CPU per request: the CPU time (user + system) of the server's process tree (the
  server and every descendant, Triton's stub processes too) read before and after each
  timed run, over the requests it completed.

Writes ``<out>/gpu_side_by_side.json`` and ``.md``. A server that cannot start is a note
in the report, not a failure of the others.

    python3 bench/gpu_side_by_side.py --out /tmp/gpu --triton /tmp/triton/pytriton/tritonserver
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402

from dl_inference.testing import ServerProcess, free_port  # noqa: E402

BATCH, DELAY_MS = 32, 2

TRITON_MODEL_PY = '''
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The TorchScript file beside this one on BENCH_DEVICE; one forward per batch."""

    def initialize(self, args):
        self.device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
        here = os.path.dirname(os.path.abspath(__file__))
        self.model = torch.jit.load(os.path.join(here, "model.pt"), map_location=self.device)
        self.model.eval()

    def execute(self, requests):
        parts = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        x = torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])
        with torch.inference_mode():
            y = self.model(x.to(self.device)).cpu().numpy()
        out, start = [], 0
        for part in parts:
            rows = y[start : start + part.shape[0]]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("output", rows)]))
            start += part.shape[0]
        return out
'''


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its live descendants, from /proc."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current in ticks and current not in tree:
            tree.add(current)
            todo += [child for child, up in parent.items() if up == current]
    return sum(ticks[p] for p in tree) / os.sysconf("SC_CLK_TCK")


# -- servers ---------------------------------------------------------------------------------


def dli_repository(root: Path, name: str, model_file: Path, device: str) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, version / "model.pt")
    shape = list(models.SHAPES[name])
    (root / name / "config.yaml").write_text(
        textwrap.dedent(f"""\
            backend: pytorch
            device: {device}
            max_batch_size: {BATCH}
            dynamic_batching: true
            max_queue_delay_ms: {DELAY_MS}
            inputs: [{{name: input, datatype: FP32, shape: {shape}}}]
            outputs: [{{name: output, datatype: FP32, shape: [10]}}]
            """)
    )
    return root


def triton_repository(root: Path, name: str, model_file: Path) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, version / "model.pt")
    (version / "model.py").write_text(TRITON_MODEL_PY)
    dims = ", ".join(str(d) for d in models.SHAPES[name])
    (root / name / "config.pbtxt").write_text(
        textwrap.dedent(f"""\
            name: "{name}"
            backend: "python"
            max_batch_size: {BATCH}
            input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
            output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
            dynamic_batching {{ max_queue_delay_microseconds: {DELAY_MS * 1000} }}
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
            """)
    )
    return root


@contextlib.contextmanager
def dli_server(repo: Path) -> Iterator[tuple[int, dict[str, int]]]:
    with ServerProcess(["--model-repository", str(repo), "--log-level", "warning"]) as srv:
        assert srv.process is not None
        yield srv.process.pid, {"grpc": srv.grpc_port, "http": srv.http_port}


@contextlib.contextmanager
def triton_server(
    triton: Path, repo: Path, name: str, python: str, device: str, log: Path
) -> Iterator[tuple[int, dict[str, int]]]:
    """``tritonserver`` on free ports, as the peers' recipe starts it; waits for the model."""
    ports = {kind: free_port() for kind in ("http", "grpc", "metrics")}
    # The stub links libpython: a Python built outside the system keeps it in its LIBDIR.
    query = "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"
    libdir = subprocess.run([python, "-c", query], capture_output=True, text=True).stdout.strip()
    env = {
        **os.environ,
        "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{triton}/external_libs:{triton}/lib:{libdir}:"
        + os.environ.get("LD_LIBRARY_PATH", ""),
        "BENCH_DEVICE": device,
    }
    command = [str(triton / "bin/tritonserver"), "--model-repository", str(repo)]
    command += ["--backend-directory", str(triton / "backends"), "--log-verbose", "0"]
    for kind in ("http", "grpc", "metrics"):
        command += [f"--{kind}-address", "127.0.0.1", f"--{kind}-port", str(ports[kind])]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{ports['http']}/v2/models/{name}/ready"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {proc.returncode}: {tail(log)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready in 180 s: {tail(log)}")
            time.sleep(0.5)
        yield proc.pid, ports
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- load ------------------------------------------------------------------------------------


def bench_command(
    url: str, name: str, conc: int, duration: float, warmup: float, out: Path
) -> list[str]:
    """``dl-inference bench`` for one point, the input given (no metadata needed)."""
    shape = ",".join(str(d) for d in (1, *models.SHAPES[name]))
    processes = 4 if conc >= 16 else 1  # a Python client process saturates near one core
    return [
        sys.executable,
        "-m",
        "dl_inference",
        "bench",
        "--url",
        url,
        "--model",
        name,
        "--input",
        f"input:FP32:{shape}",
        "--concurrency",
        str(conc),
        "--processes",
        str(processes),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--json",
        str(out),
        "--quiet",
    ]


def measure(
    pid: int, url: str, name: str, conc: int, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """A warm-up run, then the timed run with the server tree's CPU read around it."""
    warm = bench_command(url, name, conc, args.warmup, 0, scratch / "warm.json")
    subprocess.run(warm, capture_output=True, text=True, timeout=args.warmup * 4 + 120)
    timed = bench_command(url, name, conc, args.duration, 0, scratch / "timed.json")
    before = tree_cpu_s(pid)
    done = subprocess.run(timed, capture_output=True, text=True, timeout=args.duration * 4 + 120)
    cpu = tree_cpu_s(pid) - before
    if done.returncode not in (0, 1) or not (scratch / "timed.json").exists():
        raise RuntimeError(f"bench failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    result = json.loads((scratch / "timed.json").read_text())["results"][0]
    lat = result["latency_ms"]
    return {
        "req_per_s": result["req_per_s"],
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "requests": result["requests"],
        "errors": result["errors"],
        "server_cpu_s": cpu,
        "server_cpu_us": cpu / result["requests"] * 1e6 if result["requests"] else None,
        "error_messages": result.get("error_messages"),
    }


# -- main ------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-side-by-side-"))
    model_dir = work / "models"
    models.make_models(model_dir)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    concs = [int(c) for c in args.conc.split(",")]
    for name in args.models.split(","):
        model_file = model_dir / name / "model.pt"
        servers: dict[str, Any] = {
            "dl-inference": lambda n=name, f=model_file: dli_server(
                dli_repository(work / f"dli-{n}", n, f, args.device)
            )
        }
        if args.triton:
            servers["triton"] = lambda n=name, f=model_file: triton_server(
                args.triton,
                triton_repository(work / f"triton-{n}", n, f),
                n,
                args.triton_python,
                args.device,
                work / f"triton-{n}.log",
            )
        for server, start in servers.items():
            print(f"-- {name}: {server}", flush=True)
            try:
                with start() as (pid, ports):
                    for proto, scheme in (("gRPC", "grpc"), ("REST", "http")):
                        url = f"{scheme}://127.0.0.1:{ports[scheme]}"
                        for conc in concs:
                            row = {"model": name, "server": server, "protocol": proto, "conc": conc}
                            try:
                                row.update(measure(pid, url, name, conc, args, work))
                            except (RuntimeError, subprocess.SubprocessError) as exc:
                                row["failed"] = str(exc)
                            rows.append(row)
                            print(line(row), flush=True)
            except (RuntimeError, TimeoutError, OSError) as exc:
                notes.append(f"{name} {server}: could not start: {str(exc)[-1500:]}")
                print("FAILED:", notes[-1], flush=True)
    if not args.triton:
        notes.append("no --triton folder given: dl-inference only")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "tool": "bench/gpu_side_by_side.py",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment(args.device),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "notes": sorted(set(notes)),
    }


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def line(row: dict[str, Any]) -> str:
    head = f"{row['model']} {row['server']} {row['protocol']} C={row['conc']}"
    if "failed" in row:
        return f"{head}: FAILED {row['failed']}"
    return (
        f"{head}: {row['req_per_s']:,.0f} req/s, p50 {_f(row['p50_ms'])} ms, "
        f"p99 {_f(row['p99_ms'])} ms, errors {row['errors']}, "
        f"server CPU {_f(row['server_cpu_us'], '{:,.0f}')} us/request"
    )


def report(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        f"GPU side by side, {doc['when']}: {env.get('gpu', env['device'])}, {env['cpus']} CPUs, "
        f"Python {env['python']}, torch {env['torch']}; dl-inference bench, closed loop, one "
        f"sample per request, {doc['args']['duration']} s per point after a "
        f"{doc['args']['warmup']} s warm-up run; batching 32 / {DELAY_MS} ms on both sides.",
        "",
        "| model | server | protocol | C | req/s | p50 ms | p99 ms | errors "
        "| server CPU per request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        if "failed" in r:
            lines.append(
                f"| {r['model']} | {r['server']} | {r['protocol']} | {r['conc']} | failed: "
                f"{r['failed'][:120]} | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['server']} | {r['protocol']} | {r['conc']} | "
            f"{r['req_per_s']:,.0f} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r['errors']} | "
            f"{_f(r['server_cpu_us'], '{:,.0f}')} us |"
        )
    ok = {
        (r["model"], r["server"], r["protocol"], r["conc"]): r
        for r in doc["rows"]
        if "failed" not in r and not r["errors"]
    }
    ratios = []
    for (model, server, proto, conc), ours in ok.items():
        theirs = ok.get((model, "triton", proto, conc))
        if server == "dl-inference" and theirs:
            ratios.append(
                f"- {model} {proto} C={conc}: dl-inference / Triton "
                f"{ours['req_per_s'] / theirs['req_per_s']:.2f}x req/s, p99 "
                f"{_f(ours['p99_ms'])} vs {_f(theirs['p99_ms'])} ms"
            )
    if ratios:
        lines += ["", *ratios]
    if doc["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in doc["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-side-by-side"))
    parser.add_argument("--device", default="cuda:0", help="cuda:0 (default) or cpu")
    parser.add_argument("--models", default="mlp,cnn,resnet18")
    parser.add_argument("--conc", default="1,32")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--triton", type=Path, help="the pytriton/tritonserver folder")
    parser.add_argument(
        "--triton-python",
        default=sys.executable,
        help="the python whose folder goes first on PATH for Triton's stub (torch, numpy)",
    )
    args = parser.parse_args()
    doc = run(args)
    text = report(doc)
    (args.out / "gpu_side_by_side.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "gpu_side_by_side.md").write_text(text)
    print()
    print(text, end="")


if __name__ == "__main__":
    main()
