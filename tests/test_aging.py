"""Aging lets lower levels progress under a flood; strict mode does not."""

import asyncio
import time

import pytest

import aem_loop
from aem_loop import Priority

# Upper bound on the flood so that a broken loop fails instead of hanging.
_FLOOD_CAP = 200_000


async def _flood_until_low_runs(loop):
    """A HIGH callback that keeps rescheduling itself; returns how many HIGH
    callbacks ran before the LOW one did (None: the flood hit its cap)."""
    state = {"high": 0, "low_at": None}
    done = loop.create_future()

    def high():
        state["high"] += 1
        if state["low_at"] is None and state["high"] < _FLOOD_CAP:
            # a little work per step so the flood spans several aging periods
            end = time.perf_counter() + 0.00002
            while time.perf_counter() < end:
                pass
            loop.call_soon(high)
        elif not done.done():
            done.set_result(None)

    low_ran = loop.create_future()

    def low():
        state["low_at"] = state["high"]
        low_ran.set_result(None)

    with aem_loop.priority(Priority.IDLE):
        loop.call_soon(low)
    with aem_loop.priority(Priority.HIGH):
        loop.call_soon(high)
    await done
    at_flood_end = state["low_at"]
    await low_ran
    return at_flood_end


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_aging_lets_low_run_during_flood(backend):
    loop = aem_loop.new_event_loop(backend=backend, aging=0.002)
    try:
        low_at = loop.run_until_complete(_flood_until_low_runs(loop))
        assert low_at is not None and 0 < low_at < _FLOOD_CAP
        assert loop.statistics().aged >= 1
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_level_keeps_being_sampled_after_aging_skips_a_cancelled_probe(backend):
    loop = aem_loop.new_event_loop(backend=backend, aging=0.002)

    async def main():
        with aem_loop.priority(Priority.IDLE):
            first = loop.call_soon(print)  # a level's first push is its lateness probe
        first.cancel()
        # aging pops the cancelled probe, then the flood's low callback
        assert await _flood_until_low_runs(loop) is not None
        with aem_loop.priority(Priority.IDLE):
            for _ in range(50):
                loop.call_soon(lambda: None)
            done = loop.create_future()
            loop.call_soon(done.set_result, None)
        await done

    try:
        loop.run_until_complete(main())
        assert loop.statistics().lateness[Priority.IDLE].samples >= 1
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_strict_mode_starves_until_flood_ends(backend):
    loop = aem_loop.new_event_loop(backend=backend, strict=True)
    try:
        global _FLOOD_CAP
        saved, _FLOOD_CAP = _FLOOD_CAP, 2000
        try:
            low_at = loop.run_until_complete(_flood_until_low_runs(loop))
        finally:
            _FLOOD_CAP = saved
        assert low_at is None  # had not run when the flood stopped
        st = loop.statistics()
        assert st.aged == 0 and st.aging is None
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_aging_keeps_fifo_within_level():
    loop = asyncio.get_running_loop()
    loop._aem.aging = 0.0005
    order = []
    done = loop.create_future()
    stop = [False]

    def high():
        end = time.perf_counter() + 0.0001
        while time.perf_counter() < end:
            pass
        if not stop[0]:
            loop.call_soon(high)

    def low(i):
        order.append(i)
        if i == 4:
            stop[0] = True
            done.set_result(None)

    with aem_loop.priority(10):
        for i in range(5):
            loop.call_soon(low, i)
    with aem_loop.priority(90):
        loop.call_soon(high)
    await done
    assert order == [0, 1, 2, 3, 4]
