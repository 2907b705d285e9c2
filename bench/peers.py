"""dl-inference vs Triton, TorchServe and MLServer, side by side in one run, one load generator.

Issues 6 and 17. Every server is measured in the same run on this machine, at each
server's best single-process setting, and every figure comes with the server CPU it cost:

- the models are the peers' seeded MLP 256 -> 1024 -> 1024 -> 10 and small CNN on 3x64x64
  (TorchScript files ``/tmp/peers/models/<model>/model.pt`` built by the peers'
  ``make_models.py``; ``--models``) and bench/models.py's ResNet-18-like CNN on 3x64x64
  (``resnet18``, written into the same folder, in the same layout, on first use); every
  server loads the same file, and every load run first checks one answer against the
  model's ``reference.npz``;
- the load generator is the peers' ``loadgen.py`` (closed loop, one sample per request,
  run from the peers' client venv) for every server, with the same client per protocol
  wherever the server speaks it: V2 gRPC with the raw grpc.aio client (``--target
  mlserver-grpc --client raw``) for dl-inference, Triton and MLServer; V2 REST with binary
  tensors (``--target v2-rest --client binary``, a bare aiohttp POST of a prebuilt body) for
  dl-inference and Triton; V2 REST with JSON tensors for MLServer (``mlserver-rest``, the
  only REST form it takes); TorchServe over REST raw bytes (``ts-rest``) and gRPC
  (``ts-grpc``). Every loadgen call names the server's port (``--port``);
- each server runs one worker process: Triton 2.51 (the real C++ server bundled by
  ``nvidia-pytriton``, the model in its python backend's stub process: the peers'
  ``triton_model.py``) with one model instance, MLServer ``parallel_workers`` 1 and 0
  (0 = inference in the server process itself), TorchServe one model worker,
  ``dl-inference serve`` without ``--workers``. Batching is tried off and on for each
  (peers: max batch 32, 2 ms, as in the peers' ``servers.py``; dl-inference:
  ``dynamic_batching: true``, ``max_batch_size: 32``, ``max_queue_delay_ms`` 0 and 2); the
  best configuration of each server at the reported concurrency is kept;
- peers are started and stopped with the peers' ``servers.py`` (fixed ports: REST 8080,
  gRPC 8081, TorchServe gRPC 7070); dl-inference with
  :class:`dl_inference.testing.ServerProcess` (``dl-inference serve --host 127.0.0.1
  --grpc-port 0 --http-port 0 --log-level warning``);
- every configuration is tried with torch's default intra-op threads (2 here) and with 1
  (``--threads``): on 2 cores a server's own work competes with the model's threads;
- server CPU per request: ``loadgen.py --server-pid PID`` reads the CPU time (user +
  system) of the server's whole process tree — the server and all its descendants: Triton's
  python-backend stubs, TorchServe's Java front end and Python workers, MLServer's workers —
  right before and right after each timed block; this script divides that CPU time by the
  requests completed in the block (:func:`cpu_us_per_request`);
- every timed block (server start, load, stop) holds an exclusive ``flock`` on
  ``/tmp/dli-bench.lock`` so it never overlaps another benchmark that takes the same lock;
- repetitions alternate the order of the blocks (forward, then backward) so slow drift of
  the machine does not favour one server.

Prerequisite: the peers' venvs and models, built once by their setup (minutes)::

    nice -n 19 bash ../shared/peers/setup.sh          # creates /tmp/peers/...

Run (from the repository root; the peers' folder from ``--peers-dir`` or ``DLI_PEERS_DIR``)::

    .venv/bin/python bench/peers.py --peers-dir ../shared/peers \\
        [--models mlp,cnn] [--duration 5] [--warmup 2] [--reps 2] [--conc 1,8,32]
        [--report-conc 32] [--only dli,triton,mlserver,torchserve] [--threads 0,1]
        [--out /tmp/dli-peers]
    .venv/bin/python bench/peers.py --from-json /tmp/dli-peers/peers.json   # redraw only

Prints Markdown tables per model (every configuration with its server CPU per request,
the best of each server and protocol, dl-inference against Triton on the same protocol,
and the ratio dl-inference best / best of MLServer and TorchServe) and writes
``<out>/peers.json``, ``<out>/peers.md`` and the loadgen logs. Results never feed a test.
The client shares the machine's cores with the server, as in every other figure of
docs/benchmarks.md.
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
MODELS = {
    "mlp": "MLP 256-1024-1024-10",
    "cnn": "small CNN on 3x64x64",
    "resnet18": "ResNet-18-like CNN on 3x64x64",
}
# The models the peers' make_models.py does not build: written into their folder from
# bench/models.py the first time a run asks for them.
BUILT_HERE = ("resnet18",)
SERVERS = ("dl-inference", "triton", "torchserve", "mlserver")  # the report's order
PEER_PORTS = (8080, 8081, 8082, 8085, 7070, 7071)  # servers.py's fixed ports
# Where servers.py's servers listen: REST 8080, gRPC 8081 (MLServer, Triton) / 7070.
PEER_ADDRESSES = {
    "triton": {"http": 8080, "grpc": 8081},
    "mlserver": {"http": 8080, "grpc": 8081},
    "torchserve": {"http": 8080, "grpc": 7070},
}
TRITON_SERVER = (
    PEERS_ROOT / "venv-triton/lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver"
)
DLI_ENV = {"BENCH_TORCH_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
DISTURBED = 0.15  # cores used by others (+ steal) above which a repetition is flagged
# Issue 17's targets, dl-inference / Triton req/s on the same protocol at the reported C.
TRITON_TARGETS = {("mlp", "gRPC"): 0.8}  # every other model and protocol: 1.0

# loadgen.py targets: what each sends, and whether it goes to the REST port.
TARGETS = {
    "mlserver-grpc": ("gRPC", "V2 gRPC"),
    "mlserver-rest": ("REST", "V2 REST JSON"),
    "v2-rest": ("REST", "V2 REST binary tensors"),
    "ts-grpc": ("gRPC", "gRPC"),
    "ts-rest": ("REST", "REST raw bytes"),
}


def protocol(target: str) -> str:
    """``gRPC`` or ``REST``: the wire a loadgen target speaks."""
    return TARGETS[target][0]


@dataclasses.dataclass(frozen=True)
class Block:
    """One server configuration: started once per repetition, loaded by each target."""

    server: str  # dl-inference | triton | mlserver | torchserve
    batching: str  # off | on
    workers: int = 1  # MLServer parallel_workers / TorchServe workers / Triton instances
    targets: tuple[tuple[str, str], ...] = ()  # (loadgen --target, --client)
    threads: int = 0  # torch intra-op threads in the server (0: default, 2 on this machine)
    delay_ms: int = 0  # dl-inference's max_queue_delay_ms (the peers' recipes batch with 2)
    model: str = "mlp"

    def config(self, target: str, client: str = "") -> str:
        proto = TARGETS[target][1]
        threads = f", {self.threads} torch thread(s)" if self.threads else ""
        if self.server == "dl-inference":
            on = f"dynamic_batching on (32, {self.delay_ms} ms)"
            batch = on if self.batching == "on" else "batching off"
            return f"{proto}, {batch}{threads}"
        batch = "batching on (32, 2 ms)" if self.batching == "on" else "batching off"
        extra = f", parallel_workers={self.workers}" if self.server == "mlserver" else ""
        return f"{proto}, {batch}{extra}{threads}"

    @property
    def tag(self) -> str:
        return (
            f"{self.model}-{self.server}-b{self.batching}{self.delay_ms}-w{self.workers}"
            f"-t{self.threads}"
        )


def blocks(
    only: set[str], threads: tuple[int, ...] = (0,), model_names: tuple[str, ...] = ("mlp",)
) -> list[Block]:
    """The matrix: each server, batching off and on, one worker process, per thread count
    and model."""
    grpc_raw = (("mlserver-grpc", "raw"),)
    # V2 REST with binary tensors (Triton's extension) for the servers that take it;
    # MLServer with JSON tensors (all it accepts; loadgen's own tritonclient client).
    v2 = (*grpc_raw, ("v2-rest", "binary"))
    mlserver_all = (*grpc_raw, ("mlserver-rest", "triton"))
    ts = (("ts-rest", "aiohttp"), ("ts-grpc", "raw"))
    matrix = [
        Block("dl-inference", "off", 1, v2),
        Block("dl-inference", "on", 1, v2),
        Block("dl-inference", "on", 1, v2, delay_ms=2),
        Block("triton", "off", 1, v2),
        Block("triton", "on", 1, v2),
        Block("mlserver", "off", 1, grpc_raw),
        Block("mlserver", "on", 1, grpc_raw),
        Block("mlserver", "off", 0, mlserver_all),
        Block("mlserver", "on", 0, mlserver_all),
        Block("torchserve", "off", 1, ts),
        Block("torchserve", "on", 1, ts),
    ]
    wanted = server_names(only)
    return [
        dataclasses.replace(block, threads=count, model=model)
        for model in model_names
        for count in threads
        for block in matrix
        if block.server in wanted
    ]


def server_names(only: set[str]) -> set[str]:
    """``--only`` names (``dli`` short for dl-inference) as the matrix's server names."""
    aliases = {"dli": "dl-inference"}
    return {aliases.get(name, name) for name in only}


def server_command(client_py: str, recipes: Path, block: Block) -> list[str]:
    """The peers' ``servers.py start`` for a peer block (it prints the server's PID)."""
    return [
        client_py,
        str(recipes / "servers.py"),
        "start",
        block.server,
        "--batching",
        block.batching,
        "--workers",
        str(block.workers),
        "--threads",
        str(block.threads),
        "--model",
        block.model,
    ]


def loadgen_command(
    client_py: str,
    recipes: Path,
    block: Block,
    target: str,
    client: str,
    *,
    port: int,
    pid: int,
    conc: str,
    duration: float,
    warmup: float,
    label: str,
    rows_file: Path,
) -> list[str]:
    """One ``loadgen.py`` run against the block's server, every concurrency in ``conc``."""
    return [
        client_py,
        str(recipes / "loadgen.py"),
        "--target",
        target,
        "--client",
        client,
        "--port",
        str(port),
        "--model",
        block.model,
        "--conc",
        conc,
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--timeout",
        "10",
        "--server-pid",
        str(pid),
        "--label",
        label,
        "--json",
        str(rows_file),
    ]


def target_port(ports: dict[str, int], target: str) -> int:
    """The port a loadgen target goes to: the server's REST or its gRPC port."""
    return ports["http" if protocol(target) == "REST" else "grpc"]


def cpu_us_per_request(row: dict[str, Any]) -> float | None:
    """Microseconds of server CPU per completed request in one loadgen row.

    loadgen.py reads the CPU time of the server's process tree right before and after the
    timed block and reports it as ``server_cores`` (CPU seconds / ``wall_s``); ``ok`` is the
    requests completed in that block. None when the row has no server figure or no request.
    """
    cores, wall, done = row.get("server_cores"), row.get("wall_s"), row.get("ok")
    if cores is None or not wall or not done:
        return None
    return cores * wall / done * 1e6


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


def build_missing_models(model_names: tuple[str, ...]) -> None:
    """Write the run's models that the peers' setup does not build (``BUILT_HERE``) into
    their model folder, in their layout, unless a run wrote them before."""
    for name in model_names:
        folder = PEERS_ROOT / "models" / name
        if name in BUILT_HERE and not (folder / "reference.npz").exists():
            models.write_peer_model(name, folder)


def check_setup(recipes: Path, servers: set[str], model_names: tuple[str, ...]) -> None:
    """The venvs and models that the peers' setup.sh builds under /tmp/peers, for the
    servers and models of this run."""
    needed = [PEERS_ROOT / "venv-client/bin/python"]
    if "mlserver" in servers:
        needed.append(PEERS_ROOT / "venv-mlserver/bin/mlserver")
    if "torchserve" in servers:
        needed += [
            PEERS_ROOT / "venv-ts/bin/torchserve",
            PEERS_ROOT / "venv-ts/bin/torch-model-archiver",
        ]
    if "triton" in servers:
        stub = TRITON_SERVER.parent.parent / "backends/python/triton_python_backend_stub"
        needed += [TRITON_SERVER, stub]
    for name in model_names:
        folder = PEERS_ROOT / "models" / name
        needed += [folder / "model.pt"]
        needed += [PEERS_ROOT / "models" / name / "reference.npz"]
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

    def dli_repository(self, block: Block) -> Path:
        """``<out>/repo-<model>-<batching>-<delay>/<model>``: bench/models.py's python-backend
        model.py serving the peers' TorchScript file (the same bytes every peer loads)."""
        root = self.out / f"repo-{block.model}-batching-{block.batching}-{block.delay_ms}ms"
        return models.write_model(
            root,
            block.model,
            PEERS_ROOT / "models",
            batching=block.batching == "on",
            queue_delay_ms=block.delay_ms,
        )

    @contextlib.contextmanager
    def serve(self, block: Block) -> Iterator[tuple[int, dict[str, int]]]:
        """Start the block's server; yields (the PID whose process tree loadgen accounts,
        its ports: ``{"grpc": ..., "http": ...}``)."""
        if block.server == "dl-inference":
            repo = self.dli_repository(block)
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
        command = server_command(self.client_py, self.recipes, block)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(
                f"servers.py start {block.server} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
        pid = int(done.stdout.split()[-1])
        try:
            yield pid, PEER_ADDRESSES[block.server]
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
        tag = f"{block.tag}-{target}-{client}-r{rep}"
        rows_file = self.out / "runs" / f"{tag}.jsonl"
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        rows_file.unlink(missing_ok=True)
        label = (
            f"server={block.server},batching={block.batching},workers={block.workers},"
            f"threads={block.threads},rep={rep}"
        )
        command = loadgen_command(
            self.client_py,
            self.recipes,
            block,
            target,
            client,
            port=target_port(ports, target),
            pid=pid,
            conc=self.args.conc,
            duration=self.args.duration,
            warmup=self.args.warmup,
            label=label,
            rows_file=rows_file,
        )
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
        return [json.loads(line) for line in rows_file.read_text().splitlines() if line]

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
                                model=block.model,
                                config=block.config(target, client),
                                batching=block.batching,
                                workers=block.workers,
                                target=target,
                                protocol=protocol(target),
                                rep=rep,
                                server_start_s=round(start_s, 1),
                                server_cpu_us=cpu_us_per_request(row),
                            )
                            row.setdefault("client", client)
                            self.rows.append(row)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                note = f"{block.tag} rep {rep}: {exc}"
                print("FAILED:", note, flush=True)
                self.notes.append(note)

    def run(self, model_names: tuple[str, ...]) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        threads = tuple(int(t) for t in self.args.threads.split(","))
        matrix = blocks(set(self.args.only.split(",")), threads, model_names)
        began = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = os.getloadavg()
        print(
            f"# dl-inference vs peers, {began}, {os.cpu_count()} cores, load avg "
            f"{load_before[0]:.2f}; {self.args.duration:g} s per point after "
            f"{self.args.warmup:g} s warm-up, C={self.args.conc}, {self.args.reps} rep(s), "
            f"models {','.join(model_names)}",
            flush=True,
        )
        for rep in range(1, self.args.reps + 1):
            order = matrix if rep % 2 else list(reversed(matrix))
            for block in order:
                print(
                    f"-- rep {rep}: {block.model} {block.server} batching {block.batching} "
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
    """Median over repetitions per (model, server, config, client, concurrency)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("model", "mlp"), row["server"], row["config"], row["client"], row["conc"])
        groups.setdefault(key, []).append(row)
    result = []
    for (model, server, config, client, conc), group in groups.items():
        rates = [r["req_per_s"] for r in group]
        p50 = [r["p50_ms"] for r in group if r.get("p50_ms") is not None]
        p99 = [r["p99_ms"] for r in group if r.get("p99_ms") is not None]
        disturbed = [(r.get("other_cores") or 0) + (r.get("steal_cores") or 0) for r in group]
        target = group[0].get("target", "mlserver-grpc")
        result.append(
            {
                "model": model,
                "server": server,
                "config": config,
                "client": client,
                "target": target,
                "protocol": protocol(target),
                "conc": conc,
                "reps": len(group),
                "req_per_s": statistics.median(rates),
                "req_per_s_min": min(rates),
                "req_per_s_max": max(rates),
                "p50_ms": statistics.median(p50) if p50 else None,
                "p99_ms": statistics.median(p99) if p99 else None,
                "errors": sum(r["errors"] for r in group),
                "server_cores": _median([r.get("server_cores") for r in group]),
                "server_cpu_us": _median([cpu_us_per_request(r) for r in group]),
                "loadgen_cores": _median([r.get("loadgen_cores") for r in group]),
                "max_other_cores": max(disturbed) if disturbed else None,
            }
        )
    return result


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def best_of(
    agg: list[dict[str, Any]], conc: int, key: Any = lambda r: r["server"]
) -> dict[Any, dict[str, Any]]:
    """The error-free row with the most req/s at ``conc`` per ``key(row)`` (default: per
    server; pass ``lambda r: (r["server"], r["protocol"])`` for per server and protocol)."""
    best: dict[Any, dict[str, Any]] = {}
    for row in agg:
        if row["conc"] != conc or row["errors"]:
            continue
        k = key(row)
        if k not in best or row["req_per_s"] > best[k]["req_per_s"]:
            best[k] = row
    return best


def per_rep_ratios(
    rows: list[dict[str, Any]],
    conc: int,
    peers: tuple[str, ...] = ("mlserver", "torchserve"),
    proto: str | None = None,
) -> list[dict[str, Any]]:
    """dl-inference's best / the best of ``peers`` within each repetition (on ``proto``'s
    wire only, when given): each repetition runs every server once, so its ratio is a pair
    measured minutes apart, and the spread of these ratios is the run's noise."""
    result = []
    ok = [
        r
        for r in rows
        if r["conc"] == conc
        and not r["errors"]
        and (proto is None or protocol(r.get("target", "mlserver-grpc")) == proto)
    ]
    for rep in sorted({r["rep"] for r in ok}):
        ours = [r["req_per_s"] for r in ok if r["rep"] == rep and r["server"] == "dl-inference"]
        others = [r for r in ok if r["rep"] == rep and r["server"] in peers]
        if ours and others:
            top = max(others, key=lambda r: r["req_per_s"])
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


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{row['req_per_s']:,.0f}"


def report(doc: dict[str, Any], report_conc: int) -> str:
    """The Markdown report of a run: one section per model."""
    agg = aggregate(doc["rows"])
    order = {name: i for i, name in enumerate(SERVERS)}
    agg.sort(key=lambda r: (r["conc"], order.get(r["server"], 9), -r["req_per_s"]))
    present = {r["model"] for r in agg}
    model_names = [m for m in MODELS if m in present] + sorted(present - set(MODELS))
    lines = [
        f"One sample per request, closed loop, peers' loadgen.py; {doc['started']} .. "
        f"{doc['finished']}, {doc['machine']['cores']} cores, {doc['args']['duration']} s per "
        f"point after {doc['args']['warmup']} s warm-up, median of {doc['args']['reps']} "
        f"rep(s). `*` = best of its server at C={report_conc}; `CPU/req` = microseconds of "
        f"the server's process tree's CPU per completed request; `other` = max cores used "
        f"by other processes + steal during a rep (> {DISTURBED} = disturbed).",
    ]
    summaries: dict[str, Any] = {}
    for model in model_names:
        rows = [r for r in agg if r["model"] == model]
        raw = [r for r in doc["rows"] if r.get("model", "mlp") == model]
        section, summaries[model] = _model_report(model, rows, raw, report_conc)
        lines += ["", *section]
    if doc["notes"]:
        lines += ["", "Notes:", *[f"- {note}" for note in doc["notes"]]]
    doc["aggregate"] = agg
    doc["summary"] = summaries
    return "\n".join(lines) + "\n"


def _model_report(
    model: str, agg: list[dict[str, Any]], raw: list[dict[str, Any]], report_conc: int
) -> tuple[list[str], dict[str, Any]]:
    best = best_of(agg, report_conc)
    lines = [
        f"### {MODELS.get(model, model)}",
        "",
        "| C | server | config | client | req/s (median) | min..max | p50 ms | p99 ms "
        "| errors | server cores | CPU/req us | other |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in agg:
        star = " *" if best.get(r["server"]) is r else ""
        lines.append(
            f"| {r['conc']} | {r['server']}{star} | {r['config']} | {r['client']} | "
            f"{r['req_per_s']:,.0f} | {r['req_per_s_min']:,.0f}..{r['req_per_s_max']:,.0f} | "
            f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} | "
            f"{_ms(r['server_cores'])} | {_us(r['server_cpu_us'])} | "
            f"{_ms(r['max_other_cores'])} |"
        )
    summary: dict[str, Any] = {"conc": report_conc, "best": best}

    # Best of each server and protocol (issue 17's table).
    by_proto = best_of(agg, report_conc, lambda r: (r["server"], r["protocol"]))
    at_one = best_of(agg, 1, lambda r: (r["server"], r["protocol"]))
    order = {name: i for i, name in enumerate(SERVERS)}
    keys = sorted(by_proto, key=lambda k: (order.get(k[0], 9), k[1]))
    lines += [
        "",
        f"Best configuration of each server and protocol at C={report_conc} (C=1 req/s: the "
        "best at C=1, whichever configuration):",
        "",
        f"| server | protocol | configuration | C=1 req/s | C={report_conc} req/s "
        f"| C={report_conc} p99 ms | server CPU per request at C={report_conc} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in keys:
        row = by_proto[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {row['config']} | {_rate(at_one.get(key))} | "
            f"{_rate(row)} | {_ms(row['p99_ms'])} | {_us(row['server_cpu_us'])} us |"
        )

    # dl-inference against Triton on the same protocol (issue 17's targets).
    versus = []
    for proto in ("gRPC", "REST"):
        ours, theirs = by_proto.get(("dl-inference", proto)), by_proto.get(("triton", proto))
        if not (ours and theirs):
            continue
        want = TRITON_TARGETS.get((model, proto), 1.0)
        ratio = ours["req_per_s"] / theirs["req_per_s"]
        p99_ok = (
            ours["p99_ms"] is not None
            and theirs["p99_ms"] is not None
            and ours["p99_ms"] <= theirs["p99_ms"]
        )
        item = {"protocol": proto, "ratio": ratio, "target": want, "p99_no_worse": p99_ok}
        one_ours, one_theirs = at_one.get(("dl-inference", proto)), at_one.get(("triton", proto))
        text = (
            f"- {proto}, C={report_conc}: dl-inference / Triton {ratio:.2f}x req/s "
            f"(target >= {want:g}x: {'met' if ratio >= want else 'NOT met'}), p99 "
            f"{_ms(ours['p99_ms'])} vs {_ms(theirs['p99_ms'])} ms "
            f"({'no worse' if p99_ok else 'worse'}), server CPU per request "
            f"{_us(ours['server_cpu_us'])} vs {_us(theirs['server_cpu_us'])} us"
        )
        if one_ours and one_theirs:
            item["p50_c1"] = (one_ours["p50_ms"], one_theirs["p50_ms"])
            text += f"; C=1 p50 {_ms(one_ours['p50_ms'])} vs {_ms(one_theirs['p50_ms'])} ms"
        per_rep = per_rep_ratios(raw, report_conc, ("triton",), proto)
        if len(per_rep) > 1:
            item["per_rep"] = per_rep
            hits = sum(r["ratio"] >= want for r in per_rep)
            text += (
                "; per repetition "
                + ", ".join(f"{r['ratio']:.2f}x" for r in per_rep)
                + f" (target met in {hits} of {len(per_rep)})"
            )
        versus.append(text)
        summary.setdefault("vs_triton", []).append(item)
    if versus:
        lines += ["", "dl-inference against Triton 2.51, best of each on the same protocol:"]
        lines += ["", *versus]

    # dl-inference against the best of MLServer and TorchServe (issue 6's target).
    ours = best.get("dl-inference")
    peers = [row for name, row in best.items() if name in ("mlserver", "torchserve")]
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
            f"{ours['req_per_s']:,.0f} req/s, p99 {_ms(ours['p99_ms'])} ms; best of MLServer "
            f"and TorchServe: {top['server']} ({top['config']}) {top['req_per_s']:,.0f} req/s, "
            f"p99 {_ms(top['p99_ms'])} ms.",
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
        per_rep = per_rep_ratios(raw, report_conc)
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
    elif ours:
        lines.append(f"No issue 6 ratio: no MLServer or TorchServe result at C={report_conc}.")
    else:
        lines.append(f"No ratio: dl-inference has no error-free result at C={report_conc}.")
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-dir", help="the peers' recipe folder (default: env DLI_PEERS_DIR)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dli-peers"))
    parser.add_argument("--models", default="mlp,cnn", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds first")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--conc", default="1,8,32", help="concurrencies, comma-separated")
    parser.add_argument("--report-conc", type=int, default=32, help="C of the ratios")
    parser.add_argument("--only", default="dli,triton,mlserver,torchserve")
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
    model_names = tuple(args.models.split(","))
    unknown = [m for m in model_names if m not in MODELS]
    if unknown:
        sys.exit(f"bench/peers.py: unknown model(s) {unknown}; known: {list(MODELS)}")
    servers = server_names(set(args.only.split(",")))
    recipes = peers_dir(args.peers_dir)
    build_missing_models(model_names)
    check_setup(recipes, servers, model_names)
    if shutil.which("java") is None and "torchserve" in servers:
        sys.exit("bench/peers.py: TorchServe needs java on PATH (or leave it out of --only)")
    runner = Runner(args, recipes)
    doc = runner.run(model_names)
    text = report(doc, args.report_conc)
    print()
    print(text, end="")
    (args.out / "peers.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "peers.md").write_text(text)
    print(f"\nwrote {args.out / 'peers.json'} and {args.out / 'peers.md'}")


if __name__ == "__main__":
    main()
