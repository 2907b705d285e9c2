"""Issue 17: gRPC replies written once per event-loop turn vs in pieces, in one server.

On a shared machine whose speed drifts by tens of percent between runs, two variants are
compared inside one server process: every second it switches between writing the frames
of one loop turn at its end (``FLUSH_PARTS`` set out of reach) and in pieces of
``FLUSH_PARTS`` frames (the default), and counts the calls it answered in each second.
Only full-load seconds count (the first two and the last one under load are left out), so
start-up and the client's warm-up weigh on neither variant. The load is the peers'
``loadgen.py`` (V2 gRPC, raw grpc.aio client), run from the peers' client venv; the model is
the peers' TorchScript file served as bench/peers.py serves it (dynamic batching 32 / 2 ms).

    python bench/alternate_flush.py [--model mlp] [--conc 32] [--duration 14] [--threads 1]
        [--peers-dir ../shared/peers] [--runs 2]

Each run reports calls per second with writes once per turn, with writes in pieces, and
their ratio; runs alternate which variant the first second gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from dl_inference.testing import free_port, stop_process

sys.path.insert(0, str(Path(__file__).parent))
import models  # bench/models.py

ONCE_PER_TURN = 10**9
PEERS_MODELS = Path("/tmp/peers/models")


def serve(argv: list[str], out: str, first: int) -> None:
    """The server side (a child process): dl-inference serve, switching every second."""
    from dl_inference.cli import main
    from dl_inference.server.grpc_h2 import connection
    from dl_inference.server.grpc_h2.stream import Stream

    pieces = connection.FLUSH_PARTS
    modes = [ONCE_PER_TURN, pieces]
    state = {"mode": first, "answered": 0}
    windows: list[tuple[int, int, float]] = []
    finish = Stream.finish

    def counting_finish(self: Stream, *args: object, **kwargs: object) -> None:
        if not self.finished:
            state["answered"] += 1
        finish(self, *args, **kwargs)  # type: ignore[arg-type]

    def switch() -> None:
        since, counted = time.monotonic(), 0
        while True:
            time.sleep(1.0)
            now, answered = time.monotonic(), state["answered"]
            windows.append((state["mode"], answered - counted, now - since))
            since, counted = now, answered
            state["mode"] ^= 1
            connection.FLUSH_PARTS = modes[state["mode"]]

    def dump() -> None:
        Path(out).write_text(json.dumps(windows))

    Stream.finish = counting_finish  # type: ignore[method-assign]
    connection.FLUSH_PARTS = modes[first]
    threading.Thread(target=switch, daemon=True).start()
    import atexit

    atexit.register(dump)
    sys.argv = ["dl-inference", *argv]
    main()


def rates(windows: list[list[float]]) -> tuple[float, float, int]:
    """Calls per second in each mode over the full-load seconds, and how many seconds."""
    loaded = [w for w in windows if w[1] > 0][2:-1]
    per_mode: list[list[float]] = [[], []]
    for mode, answered, seconds in loaded:
        per_mode[int(mode)].append(answered / seconds)
    once, pieces = (sum(r) / len(r) if r else float("nan") for r in per_mode)
    return once, pieces, len(loaded)


def repository(root: Path, model: str) -> Path:
    """The peers' TorchScript ``model`` as bench/peers.py serves it, batching 32 / 2 ms."""
    return models.write_model(root, model, PEERS_MODELS, batching=True, queue_delay_ms=2)


def run(args: argparse.Namespace, first: int) -> tuple[float, float, int]:
    http, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "windows.json")
        repo = repository(Path(tmp) / "repo", args.model)
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                out,
                str(first),
                "serve",
                "--model-repository",
                str(repo),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc_port),
                "--log-level",
                "warning",
            ],
            env={**os.environ, "BENCH_TORCH_THREADS": str(args.threads)},
        )
        try:
            ready = f"http://127.0.0.1:{http}/v2/models/{args.model}/ready"
            for _ in range(240):
                try:
                    with urllib.request.urlopen(ready, timeout=1):
                        break
                except OSError:
                    time.sleep(0.5)
            peers = Path(args.peers_dir)
            subprocess.run(
                [
                    "/tmp/peers/venv-client/bin/python",
                    str(peers / "loadgen.py"),
                    "--target",
                    "mlserver-grpc",
                    "--client",
                    "raw",
                    "--port",
                    str(grpc_port),
                    "--model",
                    args.model,
                    "--conc",
                    str(args.conc),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    "2",
                    "--timeout",
                    "10",
                    "--label",
                    "alternate",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        finally:
            stop_process(server)
        return rates(json.loads(Path(out).read_text()))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[4:], sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--duration", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=1, help="BENCH_TORCH_THREADS")
    parser.add_argument("--peers-dir", default="../shared/peers")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    for index in range(args.runs):
        once, pieces, seconds = run(args, index % 2)
        print(
            f"run {index + 1}: once per turn {once:,.0f} calls/s, in pieces {pieces:,.0f} "
            f"calls/s, ratio {pieces / once:.3f} ({seconds} full-load seconds)",
            flush=True,
        )


if __name__ == "__main__":
    main()
