"""Timer benchmarks: schedule+cancel, churn, memory, periodic lateness, slack.

Every measurement runs in a fresh interpreter (``python -m
aem_loop.bench.timers_bench one SPEC``) so that heap size and garbage
collector state left by one loop do not bill the next.  Workloads:

- ``bulk``: schedule N timers (delays uniform in 100..400 s: request
  timeouts; none falls due during a run), cancel them all, then run one
  loop iteration.  ns per timer; the pause of that iteration (asyncio
  rebuilds its heap there).
- ``churn``: N timers pending; then 2N times: cancel a random one, schedule a
  new one (a server whose connections finish and start); every 1000 operations
  the loop runs one iteration.  ns per operation, with and without the
  garbage collector's time (stock asyncio keeps cancelled handles until it
  rebuilds its heap: the garbage makes collections run over every pending
  timer); the longest iteration and the longest 1000 operations, without
  the collector's pauses in them (those are not the timers' housekeeping).
- ``floor``: only build N handles as call_later must (object + context
  copy), nothing scheduled: stock's bulk time over this bounds what any
  pure-Python loop returning asyncio TimerHandles can reach.
- ``memory``: bytes per pending timer (tracemalloc, N = 100k).
- ``periodic``: a 2 ms periodic job under a flood of 1000 tasks burning
  50 us per step.  aem: ``call_every(..., priority=CRITICAL)``, the lateness
  of every tick, a tick the job skipped included (:func:`backfilled`); stock
  asyncio and uvloop: ``while True: await asyncio.sleep(0.002)``, the
  lateness of each wakeup from when it asked to wake up.  The first WARMUP
  seconds are not counted, on every loop alike.
- ``slack``: 10k timers, each re-armed on expiry after 50..150 ms (keepalive
  timers of 10k connections) for 2 s; loop wakeups per second that fired
  timers, with the loop option timer_slack 0, 5 ms and 20 ms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from .common import Flood, GCPauses, loop_factory


def _noop() -> None:
    pass


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "samples": len(xs),
    }


def bulk(loop_name: str, n: int) -> dict[str, float]:
    loop = loop_factory(loop_name)()
    try:
        rng = random.Random(1)
        delays = [rng.uniform(100, 400) for _ in range(n)]
        cb = _noop
        gc.collect()
        t0 = time.perf_counter()
        hs = [loop.call_later(d, cb) for d in delays]
        t1 = time.perf_counter()
        for h in hs:
            h.cancel()
        t2 = time.perf_counter()
        loop.run_until_complete(asyncio.sleep(0))
        t3 = time.perf_counter()
        return {
            "schedule_ns": (t1 - t0) / n * 1e9,
            "cancel_ns": (t2 - t1) / n * 1e9,
            "total_ns": (t3 - t0) / n * 1e9,
            "pause_ms": (t3 - t2) * 1e3,
        }
    finally:
        loop.close()


def floor(n: int) -> dict[str, float]:
    """What any call_later that returns an asyncio TimerHandle must at least
    do, without scheduling or cancelling anything: build the handle and copy
    the context (aem's own construction, as in bulk).  Bounds the speed-up a
    pure-Python loop can reach on bulk: stock's bulk time / this."""
    from aem_loop.core.loopbase import _fast_timer

    loop = loop_factory("aem-selector")()
    try:
        rng = random.Random(1)
        delays = [rng.uniform(100, 400) for _ in range(n)]
        cb = _noop
        mono = time.monotonic
        gc.collect()
        t0 = time.perf_counter()
        hs = [_fast_timer(loop, mono() + d, cb, (), None) for d in delays]
        t1 = time.perf_counter()
        del hs
        return {"total_ns": (t1 - t0) / n * 1e9}
    finally:
        loop.close()


async def _churn(n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    rng = random.Random(2)
    cb = _noop
    hs = [loop.call_later(rng.uniform(100, 400), cb) for _ in range(n)]
    await asyncio.sleep(0)
    gc.collect()
    ops = 2 * n  # asyncio compacts its heap once garbage passes half of it
    idx = [rng.randrange(n) for _ in range(ops)]
    delays = [rng.uniform(100, 400) for _ in range(ops)]
    worst = worst_nogc = worst_ops = 0.0
    perf = time.perf_counter
    with GCPauses() as gcc:
        t0 = batch = perf()
        g = gcc.total
        for i in range(ops):
            j = idx[i]
            hs[j].cancel()
            hs[j] = loop.call_later(delays[i], cb)
            if i % 1000 == 999:
                s = perf()
                worst_ops = max(worst_ops, s - batch - (gcc.total - g))
                g = gcc.total
                await asyncio.sleep(0)
                batch = perf()
                d = batch - s
                worst = max(worst, d)
                worst_nogc = max(worst_nogc, d - (gcc.total - g))
                g = gcc.total
        t1 = perf()
    for h in hs:
        h.cancel()
    return {"op_ns": (t1 - t0) / ops * 1e9, "op_ns_excl_gc": (t1 - t0 - gcc.total) / ops * 1e9,
            "max_1000_ops_ms": worst_ops * 1e3, "max_iteration_ms": worst * 1e3,
            "max_iteration_ms_excl_gc": worst_nogc * 1e3, "gc_s": gcc.total}


def churn(loop_name: str, n: int) -> dict[str, float]:
    loop = loop_factory(loop_name)()
    try:
        return loop.run_until_complete(_churn(n))
    finally:
        loop.close()


def memory(loop_name: str, n: int) -> dict[str, float]:
    loop = loop_factory(loop_name)()
    try:
        rng = random.Random(3)
        delays = [rng.uniform(100, 400) for _ in range(n)]
        cb = _noop
        hs: list[Any] = [None] * n
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            hs[i] = loop.call_later(delays[i], cb)
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        for h in hs:
            h.cancel()
        # uvloop's handles live partly in C (libuv timers): tracemalloc sees
        # only Python's allocator, so uvloop's figure is a lower bound.
        return {"bytes_per_timer": used / n}
    finally:
        loop.close()


PERIOD = 0.002
WORK = 50e-6
# Not counted, on every loop alike (steady state, as the latency benchmark):
# on aem's uvloop backend this holds the one-time switch from uvloop's fast
# path, when the backlog already in uvloop's queue runs once (~50 ms here).
WARMUP = 0.2


def backfilled(first_due: float, interval: float, runs: list[float], t_from: float,
               t_to: float) -> tuple[list[float], int]:
    """Lateness of every tick due in [t_from, t_to), and how many of them
    had no run of their own (missed): tick j (due at first_due + j *
    interval) is served by the first run at or after its due time, so a
    tick the job skipped counts with its own lateness (a 50 ms stall is 25
    late ticks, not one run 0.x ms after the last)."""
    out: list[float] = []
    serving: set[int] = set()
    i = 0
    j = max(0, math.ceil((t_from - first_due) / interval))
    while True:
        due = first_due + j * interval
        if due >= t_to:
            break
        while i < len(runs) and runs[i] < due:
            i += 1
        if i == len(runs):
            break
        out.append(runs[i] - due)
        serving.add(i)
        j += 1
    return out, len(out) - len(serving)


async def _periodic(tasks: int, duration: float, aem: bool) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    flood = Flood(tasks, WORK)
    await asyncio.sleep(0.05)  # the backlog builds up
    late: list[float] = []
    t_from = loop.time() + WARMUP
    t_end = t_from + duration
    if aem:
        import aem_loop

        done = loop.create_future()
        ran: list[float] = []

        def probe() -> None:
            now = loop.time()
            ran.append(now)
            if now >= t_end and not done.done():
                done.set_result(None)

        job = loop.call_every(PERIOD, probe, priority=aem_loop.Priority.CRITICAL)  # type: ignore[attr-defined]
        first_due = job.next_due()
        await done
        job.cancel()
        late, missed = backfilled(first_due, PERIOD, ran, t_from, t_end)
        runs = sum(1 for t in ran if t >= t_from)
    else:
        runs = 0
        while True:
            want = loop.time() + PERIOD
            await asyncio.sleep(PERIOD)
            now = loop.time()
            if want >= t_from:
                late.append(now - want)
                runs += 1
            if now >= t_end:
                break
        missed = 0
    await flood.stop()
    out = _pct(late)
    out["runs"] = runs
    out["missed"] = missed
    return out


def periodic(loop_name: str, tasks: int, duration: float) -> dict[str, float]:
    loop = loop_factory(loop_name)()
    try:
        return loop.run_until_complete(
            _periodic(tasks, duration, loop_name.startswith("aem-"))
        )
    finally:
        loop.close()


async def _slack(n: int, duration: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    rng = random.Random(4)
    t_end = loop.time() + duration
    fired = 0

    def keepalive() -> None:
        nonlocal fired
        fired += 1
        if loop.time() < t_end:
            loop.call_later(rng.uniform(0.05, 0.15), keepalive)

    for _ in range(n):
        loop.call_later(rng.uniform(0.05, 0.15), keepalive)
    s0 = loop.statistics()  # type: ignore[attr-defined]
    await asyncio.sleep(duration)
    s1 = loop.statistics()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)  # let the last ones fire
    return {
        "timers_per_s": (s1.timers_fired - s0.timers_fired) / duration,
        "wakeups_per_s": (s1.timer_wakeups - s0.timer_wakeups) / duration,
        "saved_per_s": (s1.timer_wakeups_saved - s0.timer_wakeups_saved) / duration,
        "polls_per_s": (s1.polls - s0.polls) / duration,
    }


def slack(loop_name: str, n: int, duration: float, timer_slack: float) -> dict[str, float]:
    import aem_loop

    loop = aem_loop.new_event_loop(backend=loop_name[4:], timer_slack=timer_slack)
    try:
        return loop.run_until_complete(_slack(n, duration))
    finally:
        loop.close()


WORKLOADS: dict[str, Any] = {"bulk": bulk, "churn": churn, "memory": memory, "periodic": periodic,
             "slack": slack, "floor": floor}


def run_one(workload: str, *args: Any) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return its figures."""
    spec = json.dumps([workload, *args])
    out = subprocess.run(
        [sys.executable, "-m", "aem_loop.bench.timers_bench", "one", spec],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "one":
        name, *a = json.loads(sys.argv[2])
        print(json.dumps(WORKLOADS[name](*a)))
    else:
        sys.exit("usage: python -m aem_loop.bench.timers_bench one JSON-SPEC")
