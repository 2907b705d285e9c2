"""The model's own limit: in-process ``torch.inference_mode()`` samples/s per batch size.

Method from ../shared/peers/inproc_limit.py: warm up, then several timed runs of about
``--secs`` each; the median samples/s is reported. TorchScript file, ``--threads`` torch
threads (the server's models use the same count).

    python bench/inproc_limit.py --model mlp --batches 1,8,32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from models import SHAPES  # bench/ is the script's folder


def run_once(model: torch.jit.ScriptModule, x: torch.Tensor, secs: float) -> tuple[int, float]:
    calls = 0
    start = time.perf_counter()
    while True:
        model(x)
        calls += 1
        now = time.perf_counter()
        if now - start >= secs:
            return calls, now - start


def measure(
    model_dir: Path, name: str, batches: list[int], threads: int, runs: int, secs: float
) -> list[dict]:
    torch.set_num_threads(threads)
    model = torch.jit.load(str(model_dir / name / "model.pt")).eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, *SHAPES[name], generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            run_once(model, x, 0.3)
            results = [run_once(model, x, secs) for _ in range(runs)]
        rates = [calls * batch / wall for calls, wall in results]
        rows.append(
            {
                "model": name,
                "batch": batch,
                "threads": threads,
                "samples_per_s": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(SHAPES), default="mlp")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dli-bench/models"))
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--secs", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = measure(
        args.dir,
        args.model,
        [int(b) for b in args.batches.split(",")],
        args.threads,
        args.runs,
        args.secs,
    )
    for row in rows:
        print(f"{row['model']} batch {row['batch']:>3}: {row['samples_per_s']:>10,.0f} samples/s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
