"""Periodic jobs: loop.call_every, aem_loop.every and the Ticker.

No test asserts how late a run was (that belongs to benchmarks/); they assert
the schedule: which tick each run stands for, that none ran early, the
missed-tick accounting of each policy, one coroutine run at a time.
Missed ticks are produced deterministically by blocking the loop.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import aem_loop


def backend_of(loop: asyncio.AbstractEventLoop) -> str:
    return getattr(loop, "backend", "asyncio")


def _call_every(loop, *args, **kwargs):  # type: ignore[no-untyped-def]
    """loop.call_every on aem loops; PeriodicJob directly on stock asyncio."""
    if hasattr(loop, "call_every"):
        return loop.call_every(*args, **kwargs)
    return aem_loop.PeriodicJob(loop, args[0], args[1], args[2:], **kwargs)


class Recorder:
    """Callback recording (time, tick index) of each run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop_after: int) -> None:
        self.loop = loop
        self.runs: list[tuple[float, int]] = []
        self.done = loop.create_future()
        self.stop_after = stop_after
        self.job: aem_loop.PeriodicJob | None = None

    def __call__(self, *args: object, **kw: object) -> None:
        assert self.job is not None
        now = self.loop.time()
        k = self.job._k - 1  # the tick this run stands for
        self.runs.append((now, k))
        if kw:
            self.kw.append(kw)
        if len(self.runs) == self.stop_after and not self.done.done():
            self.done.set_result(None)

    kw: list[dict[str, object]]


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_thousand_ticks_no_drift() -> None:
    """Tick k is due at start + k*interval: after 1000 ticks the schedule has
    not drifted, each run stands for the tick the clock is in, none is early."""
    loop = asyncio.get_running_loop()
    rec = Recorder(loop, 1000)
    interval = 0.002
    rec.job = job = _call_every(loop, interval, rec)
    start = job._start
    await rec.done
    # no drift: the next tick is due exactly at start + k * interval
    k_next = job._k
    assert job.next_due() == start + k_next * interval
    job.cancel()
    for now, k in rec.runs:
        due = start + k * interval
        assert now >= due, f"tick {k} ran early"
    ks = [k for _, k in rec.runs]
    assert ks == sorted(set(ks))
    st = job.statistics()
    assert st.runs == 1000
    # Each run stands for the latest tick due when the job decided (the job's
    # own clock reading, not this callback's, which a stalled machine delays).
    assert st.lateness.max < interval
    assert st.missed == ks[-1] - 1000  # every tick either ran or was counted missed
    assert job.next_due() is None


@pytest.mark.conformance
@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["skip", "coalesce", "burst"])
async def test_missed_policies(policy: str) -> None:
    loop = asyncio.get_running_loop()
    interval = 0.010
    rec = Recorder(loop, 4)
    rec.kw = []
    blocked = []

    def cb(**kw: object) -> None:
        rec(**kw)
        if not blocked:
            blocked.append(1)
            time.sleep(3.5 * interval)  # ticks 2, 3, 4 come due meanwhile

    rec.job = job = _call_every(loop, interval, cb, missed=policy)
    await rec.done
    job.cancel()
    ks = [k for _, k in rec.runs]
    st = job.statistics()
    if policy == "burst":
        assert ks == [1, 2, 3, 4]  # caught up one run per tick
        assert st.missed == 0
    elif policy == "skip":
        assert ks[1] >= 4  # went straight to the latest due tick
        assert st.missed == ks[-1] - len(ks)
    else:
        assert ks[1] >= 4
        assert rec.kw[0]["ticks"] == 1
        assert rec.kw[1]["ticks"] == ks[1] - ks[0]  # the run stands for all of them
        assert sum(kw["ticks"] for kw in rec.kw) == ks[-1]
        assert st.missed == ks[-1] - len(ks)


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_coroutine_job_one_run_at_a_time() -> None:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    active = 0
    most = 0
    runs = 0
    third = loop.create_future()

    async def work() -> None:
        nonlocal active, most, runs
        active += 1
        most = max(most, active)
        runs += 1
        if runs == 1:
            await release.wait()  # overrun: ticks come due while it waits
        active -= 1
        if runs == 3 and not third.done():
            third.set_result(None)

    job = _call_every(loop, 0.005, work)
    # let at least three ticks pass during the first run
    while job._k < 5:
        await asyncio.sleep(0.005)
    release.set()
    await third
    job.cancel()
    assert most == 1
    st = job.statistics()
    assert st.missed >= 2  # the overrun ticks
    assert st.runs >= 3


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_cancel_stops_a_running_coroutine() -> None:
    loop = asyncio.get_running_loop()
    started = loop.create_future()
    cancelled = loop.create_future()

    async def work() -> None:
        started.set_result(None)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set_result(None)
            raise

    job = _call_every(loop, 0.001, work)
    await started
    job.cancel()
    await cancelled
    assert job.cancelled()


@pytest.mark.conformance
@pytest.mark.asyncio
@pytest.mark.parametrize("coro", [False, True])
async def test_exception_goes_to_handler_and_job_goes_on(coro: bool) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    calls = 0
    third = loop.create_future()

    def boom_sync() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set_result(None)
        raise RuntimeError(f"boom {calls}")

    async def boom_async() -> None:
        boom_sync()

    try:
        job = _call_every(loop, 0.002, boom_async if coro else boom_sync)
        await third
        await asyncio.sleep(0)  # the task's done callback reports it
        job.cancel()
    finally:
        loop.set_exception_handler(None)
    assert len(seen) >= 2
    assert isinstance(seen[0]["exception"], RuntimeError)
    assert seen[0]["periodic_job"] is job
    assert "periodic job" in seen[0]["message"]
    assert job.statistics().errors >= 2


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_stop_on_error() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    reported = loop.create_future()

    def handler(lp: object, ctx: dict) -> None:
        seen.append(ctx)
        if not reported.done():
            reported.set_result(None)

    loop.set_exception_handler(handler)
    try:
        job = _call_every(loop, 0.001, _raise, stop_on_error=True)
        await reported
        # a later tick would have run by now if the job had not stopped
        await asyncio.sleep(0.005)
    finally:
        loop.set_exception_handler(None)
    assert job.cancelled()
    assert job.statistics().runs == 1 and len(seen) == 1


def _raise() -> None:
    raise ValueError("x")


@pytest.mark.conformance
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "interval, exc, word",
    [
        (0, ValueError, "interval"),
        (-1, ValueError, "interval"),
        (math.nan, ValueError, "NaN"),
        (math.inf, ValueError, "interval"),
        ("1", TypeError, "interval"),
        (True, TypeError, "interval"),
    ],
)
async def test_bad_interval(interval: object, exc: type, word: str) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(exc, match=word):
        _call_every(loop, interval, lambda: None)
    with pytest.raises(exc, match=word):
        aem_loop.every(interval)


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_bad_arguments() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError, match="callable"):
        _call_every(loop, 1, "not callable")
    with pytest.raises(ValueError, match="missed"):
        _call_every(loop, 1, lambda: None, missed="later")
    with pytest.raises(ValueError, match="priority"):
        _call_every(loop, 1, lambda: None, priority=100)
    with pytest.raises(TypeError, match="priority"):
        _call_every(loop, 1, lambda: None, priority=1.5)

    async def coro() -> None:
        pass

    c = coro()
    with pytest.raises(TypeError, match="coroutine object"):
        _call_every(loop, 1, c)
    c.close()
    with pytest.raises(TypeError, match="without a callback"):
        aem_loop.every(1, None, 2)


@pytest.mark.asyncio
async def test_every_on_the_running_loop_and_priority() -> None:
    loop = asyncio.get_running_loop()
    levels: list[int] = []
    done = loop.create_future()

    def cb() -> None:
        levels.append(aem_loop.current_priority())
        if len(levels) == 3:
            done.set_result(None)

    job = aem_loop.every(0.002, cb, priority=aem_loop.Priority.HIGH)
    assert isinstance(job, aem_loop.PeriodicJob)
    await done
    job.cancel()
    assert levels == [int(aem_loop.Priority.HIGH)] * 3
    assert "PeriodicJob" in repr(job)


@pytest.mark.conformance
@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["skip", "coalesce", "burst"])
async def test_ticker(policy: str) -> None:
    loop = asyncio.get_running_loop()
    interval = 0.005
    ticks = []
    async for tick in aem_loop.every(interval, missed=policy):
        assert loop.time() >= tick.due  # never early
        ticks.append(tick)
        if len(ticks) == 1:
            time.sleep(3.5 * interval)  # the body overruns
        if len(ticks) == 4:
            break
    idx = [t.number for t in ticks]
    # The first tick is number 1 unless the loop reached it more than an
    # interval late (a loaded machine): then "skip" and "coalesce" start
    # further on, and what they report must say so.
    start = ticks[0].due - idx[0] * interval
    assert all(abs(t.due - (start + t.number * interval)) < 1e-9 for t in ticks)
    if policy == "burst":
        assert idx == [1, 2, 3, 4] and ticks[-1].missed == 0
    else:
        assert idx[0] >= 1
        assert idx[1] >= idx[0] + 3  # the body overran 3.5 intervals
        assert ticks[-1].missed == idx[-1] - 4
        if policy == "coalesce":
            assert ticks[0].ticks == idx[0]
            assert ticks[1].ticks == idx[1] - idx[0]


@pytest.mark.asyncio
async def test_ticker_close_and_priority() -> None:
    loop = asyncio.get_running_loop()
    ticker = aem_loop.every(0.001, priority=aem_loop.Priority.HIGH)
    assert isinstance(ticker, aem_loop.Ticker)
    seen = []
    async for _ in ticker:
        seen.append(aem_loop.effective_priority())
        ticker.close()
    assert len(seen) == 1
    if backend_of(loop) != "asyncio":
        assert seen == [int(aem_loop.Priority.HIGH)]  # woken by its timer


def test_benchmark_backfill_counts_every_skipped_tick():
    """The periodic benchmark's tail counts each tick a stall made the job
    skip with its own lateness (bench.timers_bench.backfilled)."""
    from aem_loop.bench.timers_bench import backfilled

    # ticks due at 1, 2, 3, ...; runs at 1.25 and 2.5, then a stall until 6.0
    late, missed = backfilled(1.0, 1.0, [1.25, 2.5, 6.0, 7.0], 0.0, 8.0)
    # tick 1 -> 1.25; 2 -> 2.5; 3, 4, 5, 6 -> 6.0 (3, 2, 1, 0 late); 7 -> 7.0
    assert late == [0.25, 0.5, 3.0, 2.0, 1.0, 0.0, 0.0]
    assert missed == 3  # ticks 3, 4, 5: run 6.0 is tick 6's
    # a window counts only the ticks due in it; ticks after the last run end it
    assert backfilled(1.0, 1.0, [1.25, 2.5, 6.0, 7.0], 2.5, 5.0) == ([3.0, 2.0], 1)
    assert backfilled(1.0, 1.0, [1.25], 0.0, 10.0) == ([0.25], 0)
