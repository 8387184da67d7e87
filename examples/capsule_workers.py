"""Capsules and periodic jobs together.

A loop samples a "sensor" every 20 ms at HIGH priority (a drift-free periodic
job), hands the CPU-heavy part (a checksum over 1 MiB) to pre-started worker
processes, keeps one dedicated worker with its own state (a KEEPALIVE cloner
event), and shows what a crashed worker looks like.

    python examples/capsule_workers.py [selector|uvloop]
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import aem_loop
from aem_loop import EventFlags

TOTALS = {"n": 0}


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def running_total(x: int) -> tuple[int, int]:
    TOTALS["n"] += x  # lives in the dedicated capsule between activations
    return TOTALS["n"], os.getpid()


def crash() -> None:
    os._exit(7)


async def main(pool: aem_loop.CapsulePool) -> None:
    loop = asyncio.get_running_loop()
    samples = []
    job = loop.call_every(0.020, lambda: samples.append(loop.time()),
                          priority=aem_loop.Priority.HIGH)

    blobs = [os.urandom(1 << 20) for _ in range(8)]
    sums = await asyncio.gather(*(pool.run(checksum, b) for b in blobs))
    print(f"{len(sums)} checksums from capsules {sorted(set(pool.pids()))[:2]}...: {sums[0]}")

    worker = loop.cloner(running_total, flags=EventFlags.CAPSULE | EventFlags.KEEPALIVE,
                         pool=pool, name="accumulator")
    for x in (1, 2, 3):
        total, pid = await worker.activate(x)
    print(f"dedicated capsule {pid} accumulated {total}; children: {worker.children}")
    await worker.close()

    try:
        await pool.run(crash)
    except aem_loop.CapsuleDied as exc:
        print(f"CapsuleDied: {exc}")
    print(f"the pool goes on: {await pool.run(checksum, b'again')}")

    await asyncio.sleep(0.1)
    job.cancel()
    st = job.statistics()
    print(f"periodic job: {st.runs} runs, {st.missed} missed, "
          f"p99 lateness {st.lateness.p99 * 1e3:.2f} ms")


if __name__ == "__main__":
    aem_loop.capsules.prestart()  # fork the worker template now, while we are small
    backend = sys.argv[1] if len(sys.argv) > 1 else "selector"
    pool = aem_loop.CapsulePool(2, reserve=1)
    try:
        aem_loop.run(main(pool), backend=backend)
    finally:
        pool.shutdown()
    print("pool shut down: no process left")
