"""Priority latency, cyclictest style.

An urgent periodic probe is due every ``period`` (2 ms) while N lower-priority
tasks each burn ~50 us per step and yield.  Tick k is due at start + k*period;
each probe run records its lateness, and ticks it missed are back-filled with
their own lateness (so a stall of 50 ms counts as 25 late samples, not one).
On aem loops the probe runs at CRITICAL and the tasks at NORMAL; on stock
loops priority does not exist, so the probe waits for the whole backlog.

The garbage collector's pauses during the probing are recorded apart
(``gc_max``): a full collection stops the process for milliseconds whatever
the loop, and is the usual cause of a p99.9/max above the slice.

The first WARMUP seconds of probing are not counted, on every loop alike
(steady state, as cyclictest): on aem's uvloop backend they contain the
one-time switch from uvloop's fast path to core dispatch, during which the
backlog already queued in uvloop runs once (docs/design.md).
"""

from __future__ import annotations

import asyncio

import numpy as np

import aem_loop

from .common import Flood, GCPauses, loop_factory

PERIOD = 0.002
WORK = 50e-6
WARMUP = 0.2


async def _measure(tasks: int, duration: float) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    flood = Flood(tasks, WORK)
    await asyncio.sleep(0.02)  # let the backlog build up
    lateness: list[float] = []
    done = loop.create_future()
    start = loop.time() + PERIOD
    k = 0

    def probe() -> None:
        nonlocal k
        now = loop.time()
        while start + k * PERIOD <= now:
            if k * PERIOD >= WARMUP:
                lateness.append(now - (start + k * PERIOD))
            k += 1
        if now - start >= duration + WARMUP:
            done.set_result(None)
            return
        loop.call_at(start + k * PERIOD, probe)

    with aem_loop.priority(aem_loop.Priority.CRITICAL):
        loop.call_at(start, probe)
    with GCPauses() as gcp:
        await done
    await flood.stop()
    return lateness, gcp.pauses


def run_once(loop_name: str, tasks: int, duration: float) -> dict[str, float]:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as r:
        late, pauses = r.run(_measure(tasks, duration))
    lat = np.array(late) * 1000.0
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
    return {"p50": float(p50), "p99": float(p99), "p99.9": float(p999),
            "max": float(lat.max()), "samples": int(lat.size),
            "gc_max": max(pauses, default=0.0) * 1000.0, "gc_n": len(pauses)}
