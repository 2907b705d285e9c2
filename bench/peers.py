"""dl-inference vs MLServer and TorchServe, side by side in one run, with one load generator.

Issue 6: "MLP, concurrency 32, one worker process: with the best settings for each side,
dl-inference >= 1.5x the best of MLServer and TorchServe measured in the same run, p99
lower". This script measures exactly that on this machine:

- the model is the peers' seeded MLP 256 -> 1024 -> 1024 -> 10 (TorchScript file
  ``/tmp/peers/models/mlp/model.pt`` built by the peers' ``make_models.py``); every server
  loads that same file, and every load run first checks one answer against the peers'
  ``reference.npz``;
- the load generator is the peers' ``loadgen.py`` (closed loop, one sample per request,
  run from the peers' client venv) for every server: MLServer over V2 gRPC (``--target
  mlserver-grpc --client raw``) and V2 REST with JSON tensors (``mlserver-rest``, the only
  REST form MLServer takes), TorchServe over REST raw bytes (``ts-rest``) and gRPC
  (``ts-grpc``), and dl-inference over V2 gRPC with the very same raw V2 client as
  MLServer (``--target mlserver-grpc --client raw --port <our port>``) and over V2 REST
  with binary tensors (``--client binary``: ``bench/loadgen_v2_binary.py`` runs
  loadgen.py with one more client, a bare aiohttp POST of a prebuilt body shaped like
  loadgen's own ``ts-rest`` client);
- each server runs one worker process: MLServer ``parallel_workers`` 1 and 0 (0 = inference
  in the server process itself), TorchServe one model worker, ``dl-inference serve`` without
  ``--workers``. Batching is tried off and on for each (MLServer / TorchServe: max batch 32,
  2 ms, as in the peers' ``servers.py``; dl-inference: ``dynamic_batching: true``,
  ``max_batch_size: 32``, ``max_queue_delay_ms`` 0 and 2); the best configuration of each server
  at the reported concurrency is kept;
- peers are started and stopped with the peers' ``servers.py``; dl-inference with
  :class:`dl_inference.testing.ServerProcess` (``dl-inference serve --host 127.0.0.1
  --grpc-port 0 --http-port 0 --log-level warning``);
- every configuration is tried with torch's default intra-op threads (2 here) and with 1
  (``--threads``): on 2 cores a server's own Python competes with the model's threads;
- every timed block (server start, load, stop) holds an exclusive ``flock`` on
  ``/tmp/dli-bench.lock`` so it never overlaps another benchmark that takes the same lock;
- repetitions alternate the order of the blocks (forward, then backward) so slow drift of
  the machine does not favour one server.

Prerequisite: the peers' venvs and models, built once by their setup (minutes)::

    nice -n 19 bash ../shared/peers/setup.sh          # creates /tmp/peers/...

Run (from the repository root; the peers' folder from ``--peers-dir`` or ``DLI_PEERS_DIR``)::

    .venv/bin/python bench/peers.py --peers-dir ../shared/peers \\
        [--duration 5] [--warmup 2] [--reps 2] [--conc 1,8,32] [--report-conc 32] \\
        [--only dli,mlserver,torchserve] [--threads 0,1] [--out /tmp/dli-peers]
    .venv/bin/python bench/peers.py --from-json /tmp/dli-peers/peers.json   # redraw only

Prints Markdown tables (every configuration, then the best of each server and the ratio
dl-inference best / best peer with the p99 comparison) and writes ``<out>/peers.json``,
``<out>/peers.md`` and the loadgen logs. Results never feed a test. The client shares the
machine's cores with the server, as in every other figure of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402

from dl_inference.testing import ServerProcess  # noqa: E402

PEERS_ROOT = Path("/tmp/peers")  # fixed by the peers' setup.sh, servers.py and loadgen.py
LOCK_FILE = Path("/tmp/dli-bench.lock")
MODEL = "mlp"
PEER_PORTS = (8080, 8081, 8082, 8085, 7070, 7071)  # servers.py's fixed ports
DLI_ENV = {"BENCH_TORCH_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
DISTURBED = 0.15  # cores used by others (+ steal) above which a repetition is flagged


@dataclasses.dataclass(frozen=True)
class Block:
    """One server configuration: started once per repetition, loaded by each target."""

    server: str  # dl-inference | mlserver | torchserve
    batching: str  # off | on
    workers: int = 1  # MLServer parallel_workers / TorchServe workers (dl-inference: 1)
    targets: tuple[tuple[str, str], ...] = ()  # (loadgen --target, --client)
    threads: int = 0  # torch intra-op threads in the server (0: default, 2 on this machine)
    delay_ms: int = 0  # dl-inference's max_queue_delay_ms (the peers' recipes batch with 2)

    def config(self, target: str, client: str = "") -> str:
        proto = {
            "mlserver-grpc": "V2 gRPC",
            "mlserver-rest": "V2 REST binary tensors" if client == "binary" else "V2 REST JSON",
            "ts-grpc": "gRPC",
            "ts-rest": "REST raw bytes",
        }[target]
        threads = f", {self.threads} torch thread(s)" if self.threads else ""
        if self.server == "dl-inference":
            on = f"dynamic_batching on (32, {self.delay_ms} ms)"
            batch = on if self.batching == "on" else "batching off"
            return f"{proto}, {batch}{threads}"
        batch = "batching on (32, 2 ms)" if self.batching == "on" else "batching off"
        extra = f", parallel_workers={self.workers}" if self.server == "mlserver" else ""
        return f"{proto}, {batch}{extra}{threads}"


def blocks(only: set[str], threads: tuple[int, ...] = (0,)) -> list[Block]:
    """The matrix: each server, batching off and on, one worker process, per thread count."""
    grpc_raw = (("mlserver-grpc", "raw"),)
    # V2 REST: dl-inference with binary tensors (Triton's extension; loadgen_v2_binary.py),
    # MLServer with JSON tensors (all it accepts; loadgen's own tritonclient client).
    dli = (*grpc_raw, ("mlserver-rest", "binary"))
    mlserver_all = (*grpc_raw, ("mlserver-rest", "triton"))
    ts = (("ts-rest", "aiohttp"), ("ts-grpc", "raw"))
    matrix = [
        Block("dl-inference", "off", 1, dli),
        Block("dl-inference", "on", 1, dli),
        Block("dl-inference", "on", 1, dli, delay_ms=2),
        Block("mlserver", "off", 1, grpc_raw),
        Block("mlserver", "on", 1, grpc_raw),
        Block("mlserver", "off", 0, mlserver_all),
        Block("mlserver", "on", 0, mlserver_all),
        Block("torchserve", "off", 1, ts),
        Block("torchserve", "on", 1, ts),
    ]
    aliases = {"dli": "dl-inference"}
    wanted = {aliases.get(name, name) for name in only}
    return [
        dataclasses.replace(block, threads=count)
        for count in threads
        for block in matrix
        if block.server in wanted
    ]


# -- environment checks ----------------------------------------------------------------------


def peers_dir(value: str | None) -> Path:
    """The peers' recipe folder from --peers-dir or DLI_PEERS_DIR; exits with a hint if absent."""
    raw = value or os.environ.get("DLI_PEERS_DIR")
    if not raw:
        sys.exit(
            "bench/peers.py: give the peers' recipe folder (servers.py, loadgen.py, setup.sh) "
            "with --peers-dir DIR or DLI_PEERS_DIR=DIR, e.g. --peers-dir ../shared/peers"
        )
    path = Path(raw).expanduser().resolve()
    missing = [n for n in ("servers.py", "loadgen.py", "setup.sh") if not (path / n).is_file()]
    if missing:
        sys.exit(f"bench/peers.py: {path} lacks {', '.join(missing)}; is it the peers' folder?")
    return path


def check_setup(recipes: Path) -> None:
    """The venvs and models that the peers' setup.sh builds under /tmp/peers."""
    needed = [
        PEERS_ROOT / "venv-client/bin/python",
        PEERS_ROOT / "venv-mlserver/bin/mlserver",
        PEERS_ROOT / "venv-ts/bin/torchserve",
        PEERS_ROOT / "venv-ts/bin/torch-model-archiver",
        PEERS_ROOT / "models" / MODEL / "model.pt",
        PEERS_ROOT / "models" / MODEL / "reference.npz",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        sys.exit(
            "bench/peers.py: the peers' setup has not been run (missing: "
            + ", ".join(missing)
            + f"); run it first (10+ minutes): nice -n 19 bash {recipes / 'setup.sh'}"
        )


def busy_ports(ports: tuple[int, ...]) -> list[int]:
    taken = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


@contextlib.contextmanager
def bench_lock(path: Path = LOCK_FILE) -> Iterator[float]:
    """Hold ``flock(LOCK_EX)`` on ``path``; yields the seconds spent waiting for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {path} (another benchmark holds it) ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.monotonic() - start
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- the runner ------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, recipes: Path) -> None:
        self.args = args
        self.recipes = recipes
        self.out: Path = args.out
        self.client_py = str(PEERS_ROOT / "venv-client/bin/python")
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    # servers --------------------------------------------------------------------------------

    def dli_repository(self, batching: str, delay_ms: int) -> Path:
        """``<out>/repo-<batching>/mlp``: bench/models.py's python-backend model.py serving
        the peers' TorchScript file (the same bytes MLServer and TorchServe load)."""
        root = self.out / f"repo-batching-{batching}-{delay_ms}ms"
        version = root / MODEL / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "model.py").write_text(models.MODEL_PY)
        link = version / "model.pt"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(PEERS_ROOT / "models" / MODEL / "model.pt")
        (root / MODEL / "config.yaml").write_text(
            models.config_yaml(MODEL, batching=batching == "on", queue_delay_ms=delay_ms)
        )
        return root

    @contextlib.contextmanager
    def serve(self, block: Block) -> Iterator[tuple[int, dict[str, int]]]:
        """Start the block's server; yields (pid for loadgen's CPU accounting, its ports:
        ``{"grpc": ..., "http": ...}``, empty for peers on servers.py's fixed ports)."""
        if block.server == "dl-inference":
            repo = self.dli_repository(block.batching, block.delay_ms)
            env = {**DLI_ENV, "BENCH_TORCH_THREADS": str(block.threads or 2)}
            argv = ["--model-repository", str(repo), "--log-level", "warning"]
            srv = ServerProcess(argv, env=env)
            with srv:
                assert srv.process is not None
                yield srv.process.pid, {"grpc": srv.grpc_port, "http": srv.http_port}
            return
        taken = busy_ports(PEER_PORTS)
        if taken:
            raise RuntimeError(f"ports {taken} are in use; servers.py needs {PEER_PORTS}")
        command = [
            self.client_py,
            str(self.recipes / "servers.py"),
            "start",
            block.server,
            "--batching",
            block.batching,
            "--workers",
            str(block.workers),
            "--threads",
            str(block.threads),
            "--model",
            MODEL,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(
                f"servers.py start {block.server} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
        pid = int(done.stdout.split()[-1])
        try:
            yield pid, {}
        finally:
            subprocess.run(
                [self.client_py, str(self.recipes / "servers.py"), "stop", str(pid)],
                timeout=120,
                check=False,
            )

    # load -----------------------------------------------------------------------------------

    def loadgen(
        self, block: Block, target: str, client: str, pid: int, ports: dict[str, int], rep: int
    ) -> list[dict[str, Any]]:
        """One loadgen run (all concurrencies); returns its rows."""
        tag = (
            f"{block.server}-b{block.batching}{block.delay_ms}-w{block.workers}-t{block.threads}"
            f"-{target}-{client}-r{rep}"
        )
        rows_file = self.out / "runs" / f"{tag}.jsonl"
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        rows_file.unlink(missing_ok=True)
        label = (
            f"server={block.server},batching={block.batching},workers={block.workers},"
            f"threads={block.threads}"
        )
        # loadgen.py itself, or wrapped to add the V2 REST binary-tensor client.
        program = [str(self.recipes / "loadgen.py")]
        if client == "binary":
            program = [str(HERE / "loadgen_v2_binary.py"), *program]
        command = [
            self.client_py,
            *program,
            "--target",
            target,
            "--client",
            client,
            "--model",
            MODEL,
            "--conc",
            self.args.conc,
            "--duration",
            str(self.args.duration),
            "--warmup",
            str(self.args.warmup),
            "--timeout",
            "10",
            "--server-pid",
            str(pid),
            "--label",
            f"{label},rep={rep}",
            "--json",
            str(rows_file),
        ]
        port = ports.get("http" if target == "mlserver-rest" else "grpc")
        if port:
            command += ["--port", str(port)]
        points = len(self.args.conc.split(","))
        limit = points * (self.args.duration + self.args.warmup) * 4 + 120
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        log = self.out / "runs" / f"{tag}.log"
        log.write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        print(done.stdout, end="", flush=True)
        if done.returncode != 0 or not rows_file.exists():
            raise RuntimeError(
                f"loadgen {target}/{client} against {block.server} failed "
                f"({done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}"
            )
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line]
        return rows

    def run_block(self, block: Block, rep: int) -> None:
        with bench_lock() as waited:
            if waited > 1:
                print(f"  (waited {waited:.0f} s for the lock)", flush=True)
            started = time.monotonic()
            try:
                with self.serve(block) as (pid, ports):
                    start_s = time.monotonic() - started
                    for target, client in block.targets:
                        rows = self.loadgen(block, target, client, pid, ports, rep)
                        for row in rows:
                            row.update(
                                server=block.server,
                                config=block.config(target, client),
                                batching=block.batching,
                                workers=block.workers,
                                target=target,
                                rep=rep,
                                server_start_s=round(start_s, 1),
                            )
                            row.setdefault("client", client)
                            self.rows.append(row)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                note = f"{block.server} batching {block.batching} rep {rep}: {exc}"
                print("FAILED:", note, flush=True)
                self.notes.append(note)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        threads = tuple(int(t) for t in self.args.threads.split(","))
        matrix = blocks(set(self.args.only.split(",")), threads)
        began = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = os.getloadavg()
        print(
            f"# dl-inference vs peers, {began}, {os.cpu_count()} cores, load avg "
            f"{load_before[0]:.2f}; {self.args.duration:g} s per point after "
            f"{self.args.warmup:g} s warm-up, C={self.args.conc}, {self.args.reps} rep(s)",
            flush=True,
        )
        for rep in range(1, self.args.reps + 1):
            order = matrix if rep % 2 else list(reversed(matrix))
            for block in order:
                print(
                    f"-- rep {rep}: {block.server} batching {block.batching} "
                    f"workers {block.workers} threads {block.threads or 'default'}",
                    flush=True,
                )
                self.run_block(block, rep)
        return {
            "tool": "bench/peers.py",
            "started": began,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": {
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "args": {k: str(v) for k, v in vars(self.args).items()},
            "rows": self.rows,
            "notes": self.notes,
        }


# -- report ----------------------------------------------------------------------------------


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repetitions per (server, config, client, concurrency)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["server"], row["config"], row["client"], row["conc"])
        groups.setdefault(key, []).append(row)
    result = []
    for (server, config, client, conc), group in groups.items():
        rates = [r["req_per_s"] for r in group]
        p50 = [r["p50_ms"] for r in group if r.get("p50_ms") is not None]
        p99 = [r["p99_ms"] for r in group if r.get("p99_ms") is not None]
        disturbed = [(r.get("other_cores") or 0) + (r.get("steal_cores") or 0) for r in group]
        result.append(
            {
                "server": server,
                "config": config,
                "client": client,
                "conc": conc,
                "reps": len(group),
                "req_per_s": statistics.median(rates),
                "req_per_s_min": min(rates),
                "req_per_s_max": max(rates),
                "p50_ms": statistics.median(p50) if p50 else None,
                "p99_ms": statistics.median(p99) if p99 else None,
                "errors": sum(r["errors"] for r in group),
                "server_cores": _median([r.get("server_cores") for r in group]),
                "loadgen_cores": _median([r.get("loadgen_cores") for r in group]),
                "max_other_cores": max(disturbed) if disturbed else None,
            }
        )
    return result


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def best_per_server(agg: list[dict[str, Any]], conc: int) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for row in agg:
        if row["conc"] != conc or row["errors"]:
            continue
        if row["server"] not in best or row["req_per_s"] > best[row["server"]]["req_per_s"]:
            best[row["server"]] = row
    return best


def per_rep_ratios(rows: list[dict[str, Any]], conc: int) -> list[dict[str, Any]]:
    """dl-inference's best / the best peer within each repetition, at ``conc``."""
    result = []
    for rep in sorted({r["rep"] for r in rows}):
        ours = [
            r["req_per_s"]
            for r in rows
            if r["rep"] == rep and r["conc"] == conc and not r["errors"]
            if r["server"] == "dl-inference"
        ]
        peers = [
            r
            for r in rows
            if r["rep"] == rep and r["conc"] == conc and not r["errors"]
            if r["server"] != "dl-inference"
        ]
        if ours and peers:
            top = max(peers, key=lambda r: r["req_per_s"])
            result.append(
                {
                    "rep": rep,
                    "dli": max(ours),
                    "peer": top["req_per_s"],
                    "peer_server": top["server"],
                    "ratio": max(ours) / top["req_per_s"],
                }
            )
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(doc: dict[str, Any], report_conc: int) -> str:
    agg = aggregate(doc["rows"])
    order = {"dl-inference": 0, "mlserver": 1, "torchserve": 2}
    agg.sort(key=lambda r: (r["conc"], order.get(r["server"], 9), -r["req_per_s"]))
    best = best_per_server(agg, report_conc)
    lines = [
        f"MLP 256-1024-1024-10, one sample per request, closed loop, peers' loadgen.py; "
        f"{doc['started']} .. {doc['finished']}, {doc['machine']['cores']} cores, "
        f"{doc['args']['duration']} s per point after {doc['args']['warmup']} s warm-up, "
        f"median of {doc['args']['reps']} rep(s). `*` = best of its server at C={report_conc}; "
        f"`other` = max cores used by other processes + steal during a rep "
        f"(> {DISTURBED} = disturbed).",
        "",
        "| C | server | config | client | req/s (median) | min..max | p50 ms | p99 ms "
        "| errors | server cores | other |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in agg:
        star = " *" if best.get(r["server"]) is r else ""
        lines.append(
            f"| {r['conc']} | {r['server']}{star} | {r['config']} | {r['client']} | "
            f"{r['req_per_s']:,.0f} | {r['req_per_s_min']:,.0f}..{r['req_per_s_max']:,.0f} | "
            f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} | "
            f"{_ms(r['server_cores'])} | {_ms(r['max_other_cores'])} |"
        )
    ours = best.get("dl-inference")
    peers = [row for name, row in best.items() if name != "dl-inference"]
    summary: dict[str, Any] = {"conc": report_conc, "best": best}
    lines.append("")
    if ours and peers:
        top = max(peers, key=lambda r: r["req_per_s"])
        ratio = ours["req_per_s"] / top["req_per_s"]
        p99_lower = (
            ours["p99_ms"] is not None
            and top["p99_ms"] is not None
            and ours["p99_ms"] < top["p99_ms"]
        )
        met = ratio >= 1.5 and p99_lower
        summary.update(ratio=ratio, best_peer=top, p99_lower=p99_lower, target_met=met)
        lines += [
            f"**C={report_conc}**: dl-inference best ({ours['config']}) "
            f"{ours['req_per_s']:,.0f} req/s, p99 {_ms(ours['p99_ms'])} ms; best peer "
            f"{top['server']} ({top['config']}) {top['req_per_s']:,.0f} req/s, p99 "
            f"{_ms(top['p99_ms'])} ms.",
            "",
            "| ratio | target (issue 6) | measured |",
            "| --- | --- | --- |",
            f"| dl-inference best / best peer, req/s, C={report_conc} | >= 1.5x | {ratio:.2f}x |",
            f"| p99, dl-inference best vs best peer | lower | {_ms(ours['p99_ms'])} vs "
            f"{_ms(top['p99_ms'])} ms ({'lower' if p99_lower else 'not lower'}) |",
            "",
            f"Target {'met' if met else 'NOT met'} in this run.",
        ]
        for peer in peers:
            lines.append(
                f"- vs best {peer['server']} ({peer['config']}): "
                f"{ours['req_per_s'] / peer['req_per_s']:.2f}x req/s, p99 "
                f"{_ms(ours['p99_ms'])} vs {_ms(peer['p99_ms'])} ms"
            )
        per_rep = per_rep_ratios(doc["rows"], report_conc)
        summary["per_rep"] = per_rep
        if per_rep:
            lines.append(
                "- per repetition (best config of each side in that rep): "
                + ", ".join(
                    f"rep {r['rep']} {r['ratio']:.2f}x ({r['dli']:,.0f} vs {r['peer']:,.0f}"
                    f" {r['peer_server']})"
                    for r in per_rep
                )
            )
    else:
        lines.append(f"No ratio: a side has no error-free result at C={report_conc}.")
    if doc["notes"]:
        lines += ["", "Notes:", *[f"- {note}" for note in doc["notes"]]]
    doc["aggregate"] = agg
    doc["summary"] = summary
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-dir", help="the peers' recipe folder (default: env DLI_PEERS_DIR)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dli-peers"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds first")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--conc", default="1,8,32", help="concurrencies, comma-separated")
    parser.add_argument("--report-conc", type=int, default=32, help="C of the ratio")
    parser.add_argument("--only", default="dli,mlserver,torchserve")
    parser.add_argument(
        "--threads",
        default="0,1",
        help="torch intra-op thread counts to try in every server (0: default, 2 here)",
    )
    parser.add_argument(
        "--from-json", type=Path, help="only redraw the report from an earlier peers.json"
    )
    args = parser.parse_args()
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        print(report(doc, args.report_conc), end="")
        return
    recipes = peers_dir(args.peers_dir)
    check_setup(recipes)
    if shutil.which("java") is None and "torchserve" in args.only:
        sys.exit("bench/peers.py: TorchServe needs java on PATH (or pass --only dli,mlserver)")
    runner = Runner(args, recipes)
    doc = runner.run()
    text = report(doc, args.report_conc)
    print()
    print(text, end="")
    (args.out / "peers.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "peers.md").write_text(text)
    print(f"\nwrote {args.out / 'peers.json'} and {args.out / 'peers.md'}")


if __name__ == "__main__":
    main()
