"""Timers on the timer wheel: never early, same-time order, O(1) cancel, slack.

The wheel itself is checked against a reference model with a clock the test
moves (so that hours of timer time, epoch changes and migrations are covered
in milliseconds); the loop-level tests run real loops on both backends, with
stock asyncio as the reference where asyncio has the same API.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aem_loop
from aem_loop.core.timers import _CHUNK, AEMTimerHandle, TimerWheel, slack_fire_time


def backend_of(loop: asyncio.AbstractEventLoop) -> str:
    return getattr(loop, "backend", "asyncio")


# -- the wheel against a model ---------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _handle() -> AEMTimerHandle:
    h = object.__new__(AEMTimerHandle)
    h._cancelled = False
    h._callback = None
    h._args = ()
    h._repr = None
    h._loop = None
    h._source_traceback = None
    h._context = None
    h._scheduled = True
    return h


_scale = st.sampled_from([0.003, 0.5, 40.0, 200.0, 5000.0])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), _scale, st.floats(0, 1)),
        st.tuples(st.just("cancel"), st.integers(0, 10**6), st.just(0.0)),
        st.tuples(st.just("same"), st.integers(0, 10**6), st.just(0.0)),
        st.tuples(st.just("advance"), _scale, st.floats(0, 1.2)),
        st.tuples(st.just("next"), st.just(0.0), st.just(0.0)),
    ),
    max_size=120,
)


@given(ops=_ops, start=st.floats(0, 2000))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_wheel_matches_model(ops: list[tuple[str, float, float]], start: float) -> None:
    """pop_due(now) returns exactly the timers due before now, in (time, seq) order.

    Also: next_when() is never after the earliest pending timer (the loop
    never sleeps through one) and the live count is exact.
    """
    clock = Clock(start)
    wheel = TimerWheel(clock)
    pending: dict[int, tuple[float, int, AEMTimerHandle]] = {}
    seq = 0
    for op, a, b in ops:
        if op == "push":
            h = _handle()
            h._when = clock.t + a * b
            seq += 1
            wheel.push(h, h._when)
            pending[id(h)] = (h._when, seq, h)
        elif op == "same" and pending:  # same time as a pending one: FIFO
            when = pending[sorted(pending)[int(a) % len(pending)]][0]
            h = _handle()
            h._when = when
            seq += 1
            wheel.push(h, when)
            pending[id(h)] = (when, seq, h)
        elif op == "cancel" and pending:
            key = sorted(pending)[int(a) % len(pending)]
            _, _, h = pending.pop(key)
            h.cancel()
        elif op == "advance":
            clock.t += a * b
            got = wheel.pop_due(clock.t)
            want = sorted(
                (v for v in pending.values() if v[0] < clock.t), key=lambda v: (v[0], v[1])
            )
            assert [id(h) for h in got] == [id(v[2]) for v in want]
            for v in want:
                del pending[id(v[2])]
        elif op == "next":
            nw = wheel.next_when()
            if pending:
                assert nw is not None and nw <= min(v[0] for v in pending.values())
            else:
                assert nw is None
        assert wheel.n == len(pending)
    # everything still pending fires, in order, once its time has come
    clock.t += 10**5
    got = wheel.pop_due(clock.t)
    want = sorted(pending.values(), key=lambda v: (v[0], v[1]))
    assert [id(h) for h in got] == [id(v[2]) for v in want]
    assert wheel.n == 0 and wheel.next_when() is None


def test_wheel_cancel_frees_at_once() -> None:
    """A cancelled timer leaves no entry behind (no garbage awaiting a sweep)."""
    clock = Clock(100.0)
    wheel = TimerWheel(clock)
    hs = []
    for i in range(10_000):
        h = _handle()
        h._when = 100.0 + (i % 997) * 0.37  # near and far (up to 6 minutes)
        wheel.push(h, h._when)
        hs.append(h)
    for h in hs:
        h.cancel()
        assert h._aem_bucket is None
    assert wheel.n == 0
    assert not any(wheel._ring) and not wheel._far and wheel._summary == 0
    assert not any(wheel._words)


def test_pending_timers_churned_while_the_wheel_is_not_asked() -> None:
    """A busy loop whose timers are all far off asks the wheel nothing for a
    long time.  The timers set and cancelled meanwhile wait in chunks of at
    most _CHUNK slots (so compacting one never touches more timers than
    that), holes stay bounded by the timers, the chunks by the timers they
    hold, and when the wheel is asked every live timer fires once, in
    (time, scheduling) order; every cancelled one is gone."""
    rng = random.Random(5)
    clock = Clock(100.0)
    wheel = TimerWheel(clock)
    live: list[tuple[float, int, AEMTimerHandle]] = []
    for seq in range(80_000):
        if seq > 30_000 and rng.random() < 0.5:  # churn: cancel one at random
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            live.pop()[2].cancel()
        h = _handle()
        h._when = 200.0 + rng.randrange(64) * 10.0  # same-time groups
        wheel.push(h, h._when)
        live.append((h._when, seq, h))
    chunks = [*wheel._old, wheel._pend]
    assert max(len(c) for c in chunks) <= _CHUNK
    assert sum(c[1] for c in chunks) == len(live) == wheel.n
    assert sum(len(c) - 2 for c in chunks) <= 2 * len(live) + 16 * len(chunks)
    assert len(chunks) <= 4 * len(live) // _CHUNK + 4
    for *_, h in live[: len(live) // 2]:  # cancelled while in old chunks
        h.cancel()
    live = live[len(live) // 2:]
    clock.t = 1000.0
    got = wheel.pop_due(clock.t)
    assert [id(h) for h in got] == [id(v[2]) for v in sorted(live, key=lambda v: v[:2])]
    assert wheel.n == 0 and not wheel._old


def test_slack_fire_time_never_early_and_bounded() -> None:
    rng = random.Random(7)
    for _ in range(10_000):
        when = rng.uniform(0, 1e5)
        slack = rng.choice([0.0, 0.0005, 0.001, 0.003, 0.05, 1.0])
        fire = slack_fire_time(when, slack)
        assert when <= fire <= when + slack + 1e-9


# -- timers on real loops -----------------------------------------------------------


@pytest.mark.conformance
@pytest.mark.asyncio
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 25), st.booleans(), st.booleans()), min_size=1, max_size=40
    )
)
async def test_never_early_in_order_and_cancelled_never_run(
    plan: list[tuple[int, bool, bool]],
) -> None:
    """Random delays (ms), some cancelled up front, some by an earlier timer."""
    loop = asyncio.get_running_loop()
    ran: list[tuple[float, int, float]] = []  # (when, seq, time it ran)
    handles: list[asyncio.TimerHandle] = []
    cancel_later: dict[int, int] = {}

    def fire(seq: int) -> None:
        h = handles[seq]
        ran.append((h.when(), seq, loop.time()))
        victim = cancel_later.get(seq)
        if victim is not None:
            handles[victim].cancel()

    for seq, (ms, _, _) in enumerate(plan):
        handles.append(loop.call_later(ms / 1000, fire, seq))
    cancelled = {i for i, (_, c, _) in enumerate(plan) if c}
    for i in cancelled:
        handles[i].cancel()
    # an earlier timer cancels a strictly later one from inside its callback
    for i, (ms, c, inside) in enumerate(plan):
        if inside and not c:
            later = [j for j, (ms2, c2, _) in enumerate(plan) if ms2 > ms + 2 and not c2]
            if later:
                cancel_later[i] = later[0]
    done = loop.create_future()
    loop.call_later(0.040, done.set_result, None)
    await done
    victims = set(cancel_later.values())
    for when, seq, at in ran:
        assert at >= when, f"timer {seq} ran {when - at:.6f} s early"
        assert seq not in cancelled
    ran_seqs = [s for _, s, _ in ran]
    assert ran_seqs == [s for _, s in sorted((w, s) for w, s, _ in ran)]
    expected = set(range(len(plan))) - cancelled
    # every timer not cancelled ran, except the victims whose killer ran first
    assert expected - victims <= set(ran_seqs)
    assert set(ran_seqs) <= expected


@pytest.mark.asyncio
async def test_same_time_fifo() -> None:
    """Timers due at the same time run in the order they were scheduled.

    Stock asyncio does not promise this (its heap is not stable: it runs
    them as 0, 2, 6, 14, 30, ...), so this is not a conformance test.
    """
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.005
    out: list[int] = []
    for i in range(200):
        loop.call_at(when, out.append, i)
    done = loop.create_future()
    loop.call_at(when + 0.001, done.set_result, None)
    await done
    assert out == list(range(200))


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_cancel_inside_callback_same_batch() -> None:
    """A timer cancels another one due at the same moment: it does not run."""
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.003
    out: list[str] = []
    second: list[asyncio.TimerHandle] = []

    def first() -> None:
        out.append("first")
        second[0].cancel()

    loop.call_at(when, first)
    second.append(loop.call_at(when, out.append, "second"))
    third = loop.call_at(when, out.append, "third")
    done = loop.create_future()
    loop.call_at(when + 0.002, done.set_result, None)
    await done
    assert out == ["first", "third"]
    assert third.cancelled() is False and second[0].cancelled()


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_cancel_after_fired_is_harmless() -> None:
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    h = loop.call_later(0.001, fired.set_result, 1)
    await fired
    other = loop.call_later(3600, lambda: None)
    h.cancel()
    h.cancel()
    assert h.cancelled()
    if backend_of(loop) != "asyncio":
        assert loop.statistics().timers_pending == 1  # only `other`
    other.cancel()
    if backend_of(loop) != "asyncio":
        assert loop.statistics().timers_pending == 0


@pytest.mark.asyncio
async def test_a_million_pending_timers() -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(3)
    cb = [].append
    hs = [loop.call_later(rng.uniform(1, 100_000), cb, i) for i in range(1_000_000)]
    assert loop.statistics().timers_pending == 1_000_000
    for h in hs[::2]:
        h.cancel()
    assert loop.statistics().timers_pending == 500_000
    await asyncio.sleep(0.001)  # the loop runs with them pending
    for h in hs[1::2]:
        h.cancel()
    assert loop.statistics().timers_pending == 0
    del hs
    fired = loop.create_future()
    loop.call_later(0.001, fired.set_result, "ok")
    assert await fired == "ok"


@pytest.mark.asyncio
async def test_slack_coalesces_wakeups() -> None:
    """Seven timers 1 ms apart with 8 ms slack fire in one wakeup, none early."""
    loop = asyncio.get_running_loop()
    grid = 0.008
    base = math.ceil(loop.time() / grid) * grid + grid
    before = loop.statistics()
    ran: list[tuple[float, float]] = []
    done = loop.create_future()

    def fire(when: float) -> None:
        ran.append((when, loop.time()))
        if len(ran) == 7:
            done.set_result(None)

    for i in range(7):  # mid-millisecond deadlines: 7 distinct ms ticks
        when = base + i / 1000 + 0.0005
        loop.call_at(when, fire, when, slack=grid)
    await done
    assert len(ran) == 7
    assert all(at >= when for when, at in ran)
    after = loop.statistics()
    assert after.timers_fired - before.timers_fired == 7
    assert after.timer_wakeups - before.timer_wakeups == 1
    assert after.timer_wakeups_saved - before.timer_wakeups_saved == 6


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_loop_option_timer_slack(backend: str) -> None:
    """timer_slack= applies to every call_later; per-call slack=0 opts out."""

    async def main() -> tuple[list[float], float]:
        lp = asyncio.get_running_loop()
        ran: list[float] = []
        done = lp.create_future()
        exact = lp.call_later(0.0015, lambda: None, slack=0)
        whens = [lp.time() + 0.001 * i + 0.0005 for i in range(5)]

        def fire(w: float) -> None:
            ran.append(lp.time() - w)
            if len(ran) == 5:
                done.set_result(None)

        for w in whens:
            lp.call_at(w, fire, w)
        await done
        return ran, exact._aem_fire - exact.when()

    loop = aem_loop.new_event_loop(backend=backend, timer_slack=0.004)
    try:
        late, exact_slack = loop.run_until_complete(main())
        assert min(late) >= 0
        assert exact_slack == 0
        assert loop.statistics().timer_wakeups_saved >= 1
    finally:
        loop.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"slack": -1}, ValueError),
        ({"slack": math.nan}, ValueError),
        ({"slack": "1"}, TypeError),
    ],
)
async def test_bad_slack(kwargs: dict, exc: type) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(exc, match="slack"):
        loop.call_later(1, lambda: None, **kwargs)


def test_bad_loop_timer_slack() -> None:
    with pytest.raises(ValueError, match="slack"):
        aem_loop.new_event_loop(timer_slack=-0.1)
    with pytest.raises(TypeError, match="slack"):
        aem_loop.new_event_loop(backend="uvloop", timer_slack="x")


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_call_at_nan_and_none() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError):
        loop.call_at(None, lambda: None)
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)
    if backend_of(loop) != "asyncio":  # stock accepts NaN and never fires it
        with pytest.raises(ValueError, match="NaN"):
            loop.call_at(math.nan, lambda: None)


@pytest.mark.asyncio
async def test_timer_handle_is_asyncio_timerhandle() -> None:
    loop = asyncio.get_running_loop()
    h = loop.call_later(10, print, "x")
    assert isinstance(h, asyncio.TimerHandle)
    # asyncio's repr, class name included (debug-mode messages show it):
    # the same as a stock TimerHandle's on this Python
    ref = asyncio.TimerHandle(h.when(), print, ("x",), loop)
    assert repr(h) == repr(ref)
    assert repr(h).startswith("<TimerHandle when=")
    assert h.when() > time.monotonic()
    h.cancel()
    ref.cancel()
    assert repr(h) == repr(ref)


@pytest.mark.asyncio
async def test_debug_mode_timer_records_source() -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        h = loop.call_later(10, lambda: None)
        assert h._source_traceback, "debug mode records where the timer was made"
        assert h._source_traceback[-1].name == "test_debug_mode_timer_records_source"
        h.cancel()
    finally:
        loop.set_debug(False)


@pytest.mark.conformance
@pytest.mark.asyncio
async def test_infinite_deadlines() -> None:
    """sleep(inf) sleeps until cancelled; call_at(-inf) is due at once."""
    loop = asyncio.get_running_loop()
    forever = loop.create_task(asyncio.sleep(math.inf))
    never = loop.call_later(math.inf, lambda: None)
    ran = loop.create_future()
    loop.call_at(-math.inf, ran.set_result, "now")
    assert await ran == "now"
    await asyncio.sleep(0.002)
    assert not forever.done() and not never.cancelled()
    forever.cancel()
    never.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    if backend_of(loop) != "asyncio":
        assert loop.statistics().timers_pending == 0
