"""The benchmark suite of issue 6, run side by side in one go; figures are ratios.

(a) in-process limit vs served samples/s at the batch size the batcher formed (MLP, CNN,
    ResNet-18-like)
(b) dynamic batching off vs on at concurrency 1, 8, 32 (MLP)
(c) served req/s vs a bare grpc.aio echo server (h2load when installed, and our client)
(d) gateway in front of a worker vs the worker directly (MLP)
(e) ``--workers 2`` vs 1 on Python-bound pre-processing

Every served point is ``dl-inference bench`` (one sample per request unless said) for
``--duration`` seconds after ``--warmup``; servers and clients share this machine's cores.

    python bench/suite.py [--duration 3] [--only a,b,c,d,e] [--out /tmp/dli-bench]

Prints Markdown tables and writes ``<out>/suite.json``. Results never feed a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import inproc_limit  # noqa: E402
import models  # noqa: E402

from dl_inference.testing import ServerProcess  # noqa: E402

ENV = {"BENCH_TORCH_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"


THREAD_KINDS = ("event loop", "model threads", "gRPC core")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the threads of ``pid``, by kind (see THREAD_KINDS)."""
    hz = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys(THREAD_KINDS, 0.0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / hz  # utime + stime
        if int(tid) == pid:
            used["event loop"] += seconds
        elif name.startswith(("event_engine", "grpc")):
            used["gRPC core"] += seconds
        else:
            used["model threads"] += seconds
    return used


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "torch_threads": args.torch_threads,
        }
        self.lines: list[str] = []
        # The served models' torch threads; the in-process limit always uses 2 (its best).
        self.env = {**ENV, "BENCH_TORCH_THREADS": str(args.torch_threads)}

    # -- helpers ---------------------------------------------------------------------------

    def bench(
        self, url: str, model: str, *, concurrency: str = "32", extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """``dl-inference bench`` in a fresh process; returns its JSON document."""
        with tempfile.NamedTemporaryFile(suffix=".json", dir=self.out, delete=False) as f:
            path = Path(f.name)
        command = [
            sys.executable,
            "-m",
            "dl_inference",
            "bench",
            "--url",
            url,
            "--model",
            model,
            "--concurrency",
            concurrency,
            "--duration",
            str(self.args.duration),
            "--warmup",
            str(self.args.warmup),
            "--json",
            str(path),
            "--quiet",
            *extra,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        document = json.loads(path.read_text())
        path.unlink()
        return document

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def server(self, repo: Path, *flags: str) -> ServerProcess:
        return ServerProcess(
            ["--model-repository", str(repo), "--log-level", "warning", *flags], env=self.env
        )

    @staticmethod
    def batch_stats(srv: ServerProcess, model: str) -> tuple[float, float]:
        """(batches, rows) the server ran for ``model`` so far (dli_batch_size histogram)."""
        with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        count = rows = 0.0
        for line in text.splitlines():
            if f'model="{model}"' not in line:
                continue
            if line.startswith("dli_batch_size_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("dli_batch_size_sum"):
                rows += float(line.rsplit(" ", 1)[1])
        return count, rows

    def repos(self) -> tuple[Path, Path]:
        models.make_models(self.out / "models")
        on = models.write_repository(self.out / "repo-batching", self.out / "models", batching=True)
        off = models.write_repository(
            self.out / "repo-nobatching", self.out / "models", batching=False
        )
        return on, off

    # -- (a) -------------------------------------------------------------------------------

    def limit_vs_served(self, repo_on: Path) -> None:
        from dl_inference.builtin.v2.bench import v2_grpc_body

        client = "h2load -c1 -m32" if shutil.which("h2load") else "dl-inference bench C=32"
        self.say(f"## (a) In-process limit vs served, batching on, concurrency 32 ({client})\n")
        self.say(
            "| model | served samples/s | mean batch formed | in-process samples/s at that"
            " batch | served / in-process | server cores: event loop / model threads / gRPC |"
        )
        self.say("| --- | --- | --- | --- | --- | --- |")
        rows = {}
        for name in ("mlp", "cnn", "resnet18"):
            x = np.load(self.out / "models" / name / "reference.npz")["input"]
            with self.server(repo_on) as srv:
                assert srv.process is not None
                before, cpu_before = self.batch_stats(srv, name), thread_cpu(srv.process.pid)
                started = time.monotonic()
                served = self.h2load(srv.grpc_address, v2_grpc_body(name, "", {"input": x}))
                if served is not None:
                    rate = served["req_per_s"]  # one sample per request
                else:
                    doc = self.bench(f"grpc://{srv.grpc_address}", name)
                    rate = doc["results"][0]["samples_per_s"]
                seconds = time.monotonic() - started
                after, cpu_after = self.batch_stats(srv, name), thread_cpu(srv.process.pid)
            cores = {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / seconds for k in cpu_after}
            batches, samples = after[0] - before[0], after[1] - before[1]
            formed = samples / batches if batches else 1.0
            batch = max(1, round(formed))
            limit = inproc_limit.measure(self.out / "models", name, [batch], 2, 5, 0.5)[0]
            ratio = rate / limit["samples_per_s"]
            rows[name] = {
                "served_samples_per_s": rate,
                "client": client,
                "mean_batch": formed,
                "inproc": limit,
                "ratio": ratio,
                "server_cores": cores,
            }
            split = " / ".join(f"{cores.get(k, 0.0):.2f}" for k in THREAD_KINDS)
            self.say(
                f"| {name} | {rate:,.0f} | {formed:.1f} | {limit['samples_per_s']:,.0f} "
                f"(batch {batch}) | {ratio:.0%} | {split} |"
            )
        self.results["a"] = rows
        self.say(
            "\nServer cores include the warm-up; the model threads are the batcher's and "
            "torch's (OpenMP) threads.\n"
        )

    # -- (b) -------------------------------------------------------------------------------

    def batching(self, repo_on: Path, repo_off: Path) -> None:
        self.say("## (b) MLP, dynamic batching off vs on\n")
        self.say(
            "| C | off req/s | on req/s | on / off | off p50 ms | on p50 ms | on p50 / off p50 "
            "| off p99 ms | on p99 ms |"
        )
        self.say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        docs = {}
        for label, repo in (("off", repo_off), ("on", repo_on)):
            with self.server(repo) as srv:
                docs[label] = self.bench(f"grpc://{srv.grpc_address}", "mlp", concurrency="1,8,32")
        rows = []
        for off, on in zip(docs["off"]["results"], docs["on"]["results"], strict=True):
            lo, ln = off["latency_ms"], on["latency_ms"]
            rows.append({"concurrency": off["concurrency"], "off": off, "on": on})
            self.say(
                f"| {off['concurrency']} | {off['req_per_s']:,.0f} | {on['req_per_s']:,.0f} "
                f"| {on['req_per_s'] / off['req_per_s']:.2f}x | {lo['p50']:.2f} | "
                f"{ln['p50']:.2f} | {ln['p50'] / lo['p50']:.2f} | {lo['p99']:.1f} | "
                f"{ln['p99']:.1f} |"
            )
        self.results["b"] = rows
        self.say()

    # -- (c) -------------------------------------------------------------------------------

    def h2load(self, address: str, body: bytes) -> dict[str, Any] | None:
        if shutil.which("h2load") is None:
            return None
        frame = self.out / "request.grpc"
        frame.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        command = [
            "h2load",
            "-c",
            "1",
            "-m",
            "32",
            # h2load takes whole seconds only.
            "-D",
            str(max(1, round(self.args.duration))),
            "--warm-up-time",
            str(max(1, round(self.args.warmup))),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
            str(frame),
            f"http://{address}{V2_INFER}",
        ]
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rate = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
        done = re.search(
            r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored",
            text,
        )
        return {
            "req_per_s": rate,
            "succeeded": int(done.group(3)),
            "failed": int(done.group(4)) + int(done.group(5)),
        }

    def echo_ceiling(self, repo_on: Path) -> None:
        from dl_inference.builtin.v2.bench import v2_grpc_body

        self.say("## (c) Served req/s vs the bare grpc.aio echo ceiling (MLP, 1 sample, 1 KiB)\n")
        x = np.load(self.out / "models" / "mlp" / "reference.npz")["input"]
        body = v2_grpc_body("mlp", "", {"input": x})
        echo = subprocess.Popen(
            [sys.executable, str(HERE / "echo_server.py")], stdout=subprocess.PIPE, text=True
        )
        try:
            address = echo.stdout.readline().split()[-1]
            echo_h2 = self.h2load(address, body)
            echo_ours = self.bench(
                f"grpc://{address}", "mlp", extra=("--input-file", str(self._npz(x)))
            )
        finally:
            echo.terminate()
            echo.wait()
        with self.server(repo_on) as srv:
            served_h2 = self.h2load(srv.grpc_address, body)
            served_ours = self.bench(f"grpc://{srv.grpc_address}", "mlp")
        self.say("| client | echo req/s | served req/s | served / echo | served p99 ms |")
        self.say("| --- | --- | --- | --- | --- |")
        if echo_h2 and served_h2:
            self.say(
                f"| h2load -c1 -m32 | {echo_h2['req_per_s']:,.0f} | "
                f"{served_h2['req_per_s']:,.0f} | "
                f"{served_h2['req_per_s'] / echo_h2['req_per_s']:.0%} | - |"
            )
        else:
            self.say("| h2load | not installed (apt-get install nghttp2-client) | | | |")
        e, s = echo_ours["results"][0], served_ours["results"][0]
        self.say(
            f"| dl-inference bench c=32 | {e['req_per_s']:,.0f} | {s['req_per_s']:,.0f} | "
            f"{s['req_per_s'] / e['req_per_s']:.0%} | {s['latency_ms']['p99']:.1f} |"
        )
        self.results["c"] = {
            "h2load": {"echo": echo_h2, "served": served_h2},
            "bench": {"echo": e, "served": s},
        }
        self.say()

    def _npz(self, x: np.ndarray) -> Path:
        path = self.out / "mlp-input.npz"
        np.savez(path, input=x)
        return path

    # -- (d) -------------------------------------------------------------------------------

    def gateway(self, repo_on: Path) -> None:
        self.say("## (d) Gateway in front of one worker vs the worker directly (MLP, C=32)\n")
        with self.server(repo_on) as worker:
            direct = self.bench(f"grpc://{worker.grpc_address}", "mlp")["results"][0]
            config = self.out / "gateway.yaml"
            config.write_text(
                "routes:\n  - model: mlp\n    nodes:\n"
                f'      - {{address: "{worker.grpc_address}"}}\n'
            )
            try:
                gateway = ServerProcess(["-c", str(config), "--log-level", "warning"], env=self.env)
                with gateway as gw:
                    via = self.bench(
                        f"grpc://{gw.grpc_address}", "mlp", extra=("--input", "input:FP32:1,256")
                    )["results"][0]
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                self.say(f"gateway did not run: {str(exc).splitlines()[0]}\n")
                self.results["d"] = {"error": str(exc)[:2000]}
                return
        self.say("| path | req/s | p50 ms | p99 ms | errors |")
        self.say("| --- | --- | --- | --- | --- |")
        for label, row in (("direct", direct), ("via gateway", via)):
            lat = row["latency_ms"]
            self.say(
                f"| {label} | {row['req_per_s']:,.0f} | {lat['p50']:.2f} | "
                f"{lat['p99']:.1f} | {row['errors']} |"
            )
        self.say(f"\ngateway / direct req/s: {via['req_per_s'] / direct['req_per_s']:.0%}\n")
        self.results["d"] = {"direct": direct, "gateway": via}

    # -- (e) -------------------------------------------------------------------------------

    def workers(self, repo_off: Path) -> None:
        self.say("## (e) --workers 2 vs 1, Python-bound pre-processing (C=32)\n")
        self.say("| workers | req/s | p50 ms | p99 ms |")
        self.say("| --- | --- | --- | --- |")
        rows = {}
        for count in (1, 2):
            with self.server(repo_off, "--workers", str(count)) as srv:
                row = self.bench(
                    f"grpc://{srv.grpc_address}",
                    "pyheavy",
                    # One connection per request in flight, as 32 separate clients would
                    # hold: SO_REUSEPORT spreads connections, so few of them spread unevenly.
                    extra=("--processes", "2", "--channels", "16"),
                )["results"][0]
            rows[count] = row
            lat = row["latency_ms"]
            self.say(f"| {count} | {row['req_per_s']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.1f} |")
        ratio = rows[2]["req_per_s"] / rows[1]["req_per_s"]
        self.say(f"\n2 workers / 1 worker: {ratio:.2f}x\n")
        self.results["e"] = rows

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        repo_on, repo_off = self.repos()
        only = set(self.args.only.split(","))
        self.say(
            f"# dl-inference suite, {self.results['started']}, {os.cpu_count()} cores, "
            f"{self.args.duration:g} s per point after {self.args.warmup:g} s warm-up\n"
        )
        if "a" in only:
            self.limit_vs_served(repo_on)
        if "b" in only:
            self.batching(repo_on, repo_off)
        if "c" in only:
            self.echo_ceiling(repo_on)
        if "d" in only:
            self.gateway(repo_on)
        if "e" in only:
            self.workers(repo_off)
        (self.out / "suite.json").write_text(json.dumps(self.results, indent=1))
        (self.out / "suite.md").write_text("\n".join(self.lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/dli-bench"))
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--only", default="a,b,c,d,e")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=2,
        help="intra-op threads of the served models (the in-process limit uses 2)",
    )
    Suite(parser.parse_args()).run()


if __name__ == "__main__":
    main()
