"""Closed- and open-loop load, in one process or several, with merged latency samples.

Closed loop: ``C`` coroutines each send a request, wait for the reply, and send the next,
for ``duration`` seconds (after ``warmup`` seconds that are not recorded).

Open loop: requests start on a fixed schedule (``rate`` per second) whatever the replies
do; a request's latency counts from its *scheduled* start, so a client or server that
falls behind shows up in the percentiles instead of hiding (no coordinated omission).

With ``processes`` > 1 the concurrency (or rate) is split over that many client processes,
each with its own connection and event loop; they start recording together (a barrier
after the warm-up) and their samples are merged before percentiles are taken.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import multiprocessing
import queue as queue_module
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from dl_inference.bench.clients import Client, RequestFailed, Target, make_client
from dl_inference.spi.protocol import BenchRequest

_MAX_ERROR_KINDS = 20


@dataclass(frozen=True)
class LoadPoint:
    """One measurement: closed loop at ``concurrency`` or open loop at ``rate`` req/s."""

    mode: str  # "closed" | "open"
    concurrency: int = 0
    rate: float = 0.0

    def label(self) -> str:
        return f"c={self.concurrency}" if self.mode == "closed" else f"rate={self.rate:g}/s"


@dataclass
class Plan:
    """Everything a client process needs (picklable: it crosses to spawned processes)."""

    target: Target
    request: BenchRequest
    duration: float
    warmup: float
    timeout: float
    processes: int = 1
    max_outstanding: int = 10000
    channels: int = 1


@dataclass
class _Recorder:
    counts: Any  # shared array: [ok, errors] per process slot
    slot: int
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    recording: bool = False

    def ok(self, seconds: float) -> None:
        if self.recording:
            self.latencies.append(seconds)
            self.counts[2 * self.slot] += 1

    def error(self, message: str) -> None:
        if self.recording:
            if message in self.errors or len(self.errors) < _MAX_ERROR_KINDS:
                self.errors[message] += 1
            else:
                self.errors["(other errors)"] += 1
            self.counts[2 * self.slot + 1] += 1


class _Shared:
    """State the client processes share with the parent's progress line."""

    def __init__(self, ctx: Any, processes: int) -> None:
        self.counts = ctx.Array("q", 2 * processes, lock=False)
        self.level = ctx.Value("i", -1, lock=False)
        self.phase = ctx.Value("i", 0, lock=False)  # 0 warm-up, 1 recording, 2 done
        self.started = ctx.Value("d", 0.0, lock=False)
        self.barrier = ctx.Barrier(processes)


def split(total: int | float, parts: int, index: int) -> int | float:
    """Process ``index``'s share of a concurrency (whole numbers) or a rate."""
    if isinstance(total, int):
        return total // parts + (1 if index < total % parts else 0)
    return total / parts


async def _one(client: Client, recorder: _Recorder, started: float) -> None:
    try:
        await client.infer()
    except RequestFailed as exc:
        recorder.error(str(exc))
        return
    except Exception as exc:  # a client bug or transport surprise is an error, not a crash
        recorder.error(f"{type(exc).__name__}: {exc}")
        return
    recorder.ok(time.perf_counter() - started)


async def closed_loop(client: Client, concurrency: int, seconds: float, rec: _Recorder) -> float:
    """Back-to-back requests from ``concurrency`` coroutines; returns the wall time."""
    start = time.perf_counter()
    end = start + seconds

    async def worker() -> None:
        while (now := time.perf_counter()) < end:
            await _one(client, rec, now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def open_loop(
    client: Client, rate: float, seconds: float, rec: _Recorder, max_outstanding: int
) -> float:
    """Requests started every ``1/rate`` s whatever the replies do; returns the wall time."""
    start = time.perf_counter()
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()
    for index in range(max(1, round(seconds * rate))):
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_outstanding:
            rec.error(
                f"client: {max_outstanding} requests outstanding, request not sent "
                "(the server is slower than the offered rate)"
            )
            continue
        task = asyncio.create_task(_one(client, rec, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def _drive(
    client: Client, point: LoadPoint, seconds: float, plan: Plan, rec: _Recorder, index: int
) -> float:
    if point.mode == "closed":
        concurrency = int(split(point.concurrency, plan.processes, index))
        if concurrency == 0:
            await asyncio.sleep(seconds)
            return seconds
        return await closed_loop(client, concurrency, seconds, rec)
    rate = float(split(point.rate, plan.processes, index))
    return await open_loop(client, rate, seconds, rec, plan.max_outstanding)


async def _run_points(
    plan: Plan,
    points: Sequence[LoadPoint],
    shared: _Shared,
    index: int,
    emit: Callable[[int, dict[str, Any]], None],
) -> None:
    client = make_client(
        plan.target,
        plan.request,
        timeout=plan.timeout,
        connections=max([p.concurrency for p in points] + [100]),
        channels=plan.channels,
    )
    await client.open()
    wait = plan.warmup + plan.duration + plan.timeout + 120
    try:
        for level, point in enumerate(points):
            rec = _Recorder(shared.counts, index)
            if index == 0:
                shared.counts[:] = [0] * len(shared.counts)
                shared.level.value = level
                shared.phase.value = 0
                shared.started.value = time.time()
            if plan.warmup > 0:
                await _drive(client, point, plan.warmup, plan, rec, index)
            # Every process starts recording at the same moment.
            await asyncio.to_thread(shared.barrier.wait, wait)
            if index == 0:
                shared.phase.value = 1
                shared.started.value = time.time()
            rec.recording = True
            wall = await _drive(client, point, plan.duration, plan, rec, index)
            rec.recording = False
            emit(
                level,
                {
                    "latencies": np.frombuffer(rec.latencies, dtype=np.float64).copy(),
                    "errors": dict(rec.errors),
                    "wall": wall,
                },
            )
            await asyncio.to_thread(shared.barrier.wait, wait)
    finally:
        await client.close()


def _child(plan: Plan, points: Sequence[LoadPoint], shared: _Shared, index: int, out: Any) -> None:
    try:
        asyncio.run(
            _run_points(
                plan, points, shared, index, lambda level, part: out.put((index, level, part))
            )
        )
    except BaseException as exc:
        out.put((index, -1, {"crash": f"{type(exc).__name__}: {exc}"}))
        with contextlib.suppress(Exception):
            shared.barrier.abort()
        raise


def summarize(
    point: LoadPoint, parts: list[dict[str, Any]], batch: int, processes: int
) -> dict[str, Any]:
    """Merge the processes' samples for one point into the reported row."""
    latencies = np.concatenate([p["latencies"] for p in parts]) if parts else np.empty(0)
    errors: collections.Counter[str] = collections.Counter()
    for part in parts:
        errors.update(part["errors"])
    wall = max((p["wall"] for p in parts), default=0.0) or 1e-9
    ms = latencies * 1e3
    stats = {"min": None, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    if ms.size:
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        stats = {
            "min": float(ms.min()),
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(ms.max()),
            "mean": float(ms.mean()),
        }
    return {
        "mode": point.mode,
        "concurrency": point.concurrency if point.mode == "closed" else None,
        "rate": point.rate if point.mode == "open" else None,
        "processes": processes,
        "duration_s": wall,
        "requests": int(ms.size),
        "errors": int(sum(errors.values())),
        "req_per_s": ms.size / wall,
        "samples_per_s": ms.size * batch / wall,
        "latency_ms": stats,
        "error_messages": dict(errors.most_common()),
    }


class _ProgressLine:
    """A one-line progress report on stderr (rewritten in place on a terminal)."""

    def __init__(
        self, shared: _Shared, points: Sequence[LoadPoint], plan: Plan, stream: TextIO
    ) -> None:
        self.shared = shared
        self.points = points
        self.plan = plan
        self.stream = stream
        self.tty = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _ProgressLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _line(self) -> str | None:
        level = self.shared.level.value
        if level < 0:
            return None
        counts = list(self.shared.counts)
        ok, errors = sum(counts[0::2]), sum(counts[1::2])
        phase = self.shared.phase.value
        elapsed = time.time() - self.shared.started.value
        point = self.points[level]
        head = f"[{level + 1}/{len(self.points)}] {point.label():<12}"
        if phase == 0:
            return f"{head} warming up {min(elapsed, self.plan.warmup):4.1f}/{self.plan.warmup:g}s"
        elapsed = min(elapsed, self.plan.duration)
        rate = ok / elapsed if elapsed > 0 else 0.0
        return (
            f"{head} {elapsed:4.1f}/{self.plan.duration:g}s  {ok} ok  {errors} errors  "
            f"{rate:,.0f} req/s"
        )

    def _loop(self) -> None:
        # Not a terminal (a log file, CI): a line when a phase starts and every few seconds.
        last_key: tuple[int, int] = (-1, -1)
        last_time = 0.0
        while not self._stop.wait(0.25):
            line = self._line()
            if line is None:
                continue
            if self.tty:
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
                continue
            key = (self.shared.level.value, self.shared.phase.value)
            if key != last_key or time.monotonic() - last_time >= 5:
                last_key, last_time = key, time.monotonic()
                self.stream.write(line + "\n")
                self.stream.flush()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def finished(self, row: dict[str, Any], point: LoadPoint) -> None:
        lat = row["latency_ms"]
        p99 = f"{lat['p99']:.2f} ms" if lat["p99"] is not None else "-"
        text = (
            f"{point.label():<12} {row['req_per_s']:,.0f} req/s  p99 {p99}  "
            f"{row['errors']} errors\n"
        )
        self.stream.write(("\r\x1b[K" if self.tty else "") + text)
        self.stream.flush()


def run(
    plan: Plan, points: Sequence[LoadPoint], batch: int, progress: TextIO | None = sys.stderr
) -> list[dict[str, Any]]:
    """Run every point; returns one summarized row per point."""
    ctx = multiprocessing.get_context("spawn")
    shared = _Shared(ctx, plan.processes)
    parts: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    rows: list[dict[str, Any]] = []
    line = _ProgressLine(shared, points, plan, progress) if progress is not None else None
    if plan.processes == 1:

        def emit(level: int, part: dict[str, Any]) -> None:
            parts[level].append(part)
            row = summarize(points[level], parts[level], batch, 1)
            rows.append(row)
            if line is not None:
                line.finished(row, points[level])

        with line or contextlib.nullcontext():
            asyncio.run(_run_points(plan, points, shared, 0, emit))
        return rows

    out = ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(plan, points, shared, i, out), daemon=True)
        for i in range(plan.processes)
    ]
    for child in children:
        child.start()
    per_point = plan.warmup + plan.duration + plan.timeout + 120
    try:
        with line or contextlib.nullcontext():
            for level, point in enumerate(points):
                while len(parts[level]) < plan.processes:
                    try:
                        index, got_level, part = out.get(timeout=per_point)
                    except queue_module.Empty:
                        raise RuntimeError(
                            f"client processes gave no result for {point.label()} "
                            f"in {per_point:.0f}s"
                        ) from None
                    if got_level < 0:
                        raise RuntimeError(f"client process {index} failed: {part['crash']}")
                    parts[got_level].append(part)
                row = summarize(point, parts[level], batch, plan.processes)
                rows.append(row)
                if line is not None:
                    line.finished(row, point)
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
                child.join()
    return rows
