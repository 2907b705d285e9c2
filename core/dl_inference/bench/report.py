"""The results table, the JSON document and the optional latency-vs-throughput plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table: one line per load point."""
    head = (
        f"{'load':<14}{'req/s':>10}{'samples/s':>12}{'p50 ms':>10}{'p90 ms':>10}"
        f"{'p99 ms':>10}{'requests':>10}{'errors':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        load = f"c={row['concurrency']}" if row["mode"] == "closed" else f"rate={row['rate']:g}/s"
        lat = row["latency_ms"]

        def ms(value: float | None) -> str:
            return f"{value:.2f}" if value is not None else "-"

        lines.append(
            f"{load:<14}{row['req_per_s']:>10,.0f}{row['samples_per_s']:>12,.0f}"
            f"{ms(lat['p50']):>10}{ms(lat['p90']):>10}{ms(lat['p99']):>10}"
            f"{row['requests']:>10}{row['errors']:>8}"
        )
    for row in rows:
        for message, count in row["error_messages"].items():
            load = f"c={row['concurrency']}" if row["mode"] == "closed" else f"rate={row['rate']:g}"
            lines.append(f"  {load}: {count} x {message}")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(path: Path, document: dict[str, Any]) -> None:
    """p50 and p99 latency against throughput, one point per load level."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = [r for r in document["results"] if r["requests"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(
            [r["req_per_s"] for r in rows],
            [r["latency_ms"][key] for r in rows],
            style,
            label=key,
        )
    for r in rows:
        label = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g}/s"
        ax.annotate(label, (r["req_per_s"], r["latency_ms"]["p99"]), fontsize=8)
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{document['model']} over {document['protocol']} ({document['url']})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
