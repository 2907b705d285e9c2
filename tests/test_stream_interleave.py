"""interleave: the requests of one stream run concurrently, bounded, each one's values in
order, and closing the merged stream closes every run at once (not when garbage is
collected)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dl_inference.kernel.streaming import STREAM_REQUESTS_IN_FLIGHT, interleave


async def numbers(count: int) -> AsyncIterator[int]:
    for number in range(count):
        yield number


def test_runs_are_concurrent_bounded_and_each_in_order() -> None:
    async def scenario() -> tuple[int, list[tuple[int, int]]]:
        active = peak = 0
        release = asyncio.Event()

        async def run(item: int) -> AsyncIterator[tuple[int, int]]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await release.wait()
                for step in range(3):
                    await asyncio.sleep(0)
                    yield item, step
            finally:
                active -= 1

        got: list[tuple[int, int]] = []

        async def consume() -> None:
            async for value in interleave(numbers(20), run, limit=4):
                got.append(value)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        started = peak  # four running, the fifth item not read yet
        release.set()
        await asyncio.wait_for(consumer, 10)
        assert peak == 4
        return started, got

    started, got = asyncio.run(scenario())
    assert started == 4
    assert len(got) == 60
    for item in range(20):
        assert [step for who, step in got if who == item] == [0, 1, 2]
    assert STREAM_REQUESTS_IN_FLIGHT >= 1


def test_a_later_run_answers_before_a_slow_earlier_one() -> None:
    async def scenario() -> list[int]:
        async def run(item: int) -> AsyncIterator[int]:
            await asyncio.sleep(0.3 if item == 0 else 0)
            yield item

        return [value async for value in interleave(numbers(2), run)]

    assert asyncio.run(scenario()) == [1, 0]


def test_closing_the_merged_stream_closes_every_run_at_once() -> None:
    async def scenario() -> tuple[int, int]:
        started = closed = 0

        async def run(item: int) -> AsyncIterator[int]:
            nonlocal started, closed
            started += 1
            try:
                yield item
                await asyncio.Event().wait()  # never ends by itself
                yield -1
            finally:
                closed += 1

        merged = interleave(numbers(3), run)
        assert {await anext(merged) for _ in range(3)} == {0, 1, 2}
        await merged.aclose()
        return started, closed

    assert asyncio.run(scenario()) == (3, 3)


def test_a_failing_source_or_run_is_raised_to_the_consumer() -> None:
    async def broken_source() -> AsyncIterator[int]:
        yield 0
        raise ConnectionError("the client's stream broke")

    async def echo(item: int) -> AsyncIterator[int]:
        yield item

    async def failing(item: int) -> AsyncIterator[int]:
        yield item
        raise ValueError("run failed")

    async def drain(source: AsyncIterator[int], run: object) -> list[int]:
        return [value async for value in interleave(source, run)]  # type: ignore[arg-type]

    with pytest.raises(ConnectionError):
        asyncio.run(drain(broken_source(), echo))
    with pytest.raises(ValueError, match="run failed"):
        asyncio.run(drain(numbers(1), failing))
