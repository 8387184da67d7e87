"""Capsules vs the stdlib's process pools and fork per call.

For each way of running a function in another process: round-trip latency of
a trivial call (p50/p99 over sequential calls), throughput with many calls
outstanding, the same with 64 KiB each way, and the time from creating the
pool to the first result.  Every pool has 2 workers (the machine's cores).

Ways compared:

- ``capsule call``: ``pool.call(fn, ...)`` (the caller reads the reply);
  ``capsule call, spin=0``: the same with the busy-poll window off (both
  sides sleep in recv(); the default polls 100 us before sleeping);
- ``capsule run``: ``await pool.run(fn, ...)`` on an aem loop (selector);
- ``capsule submit``: ``pool.submit(fn, ...).result()`` (manager thread);
- ``ProcessPool fork`` / ``ProcessPool forkserver``: concurrent.futures'
  ProcessPoolExecutor, warm, ``submit().result()``;
- ``mp.Pool``: ``multiprocessing.Pool.apply``;
- ``fork per call``: ``os.fork()``, the child answers through a pipe and
  exits, the parent reads and reaps it;
- ``raw socketpair``: the floor, not a pool: 60 bytes (the size of a trivial
  call's pickle) to a pre-forked process that echoes them, no pickling
  (reads of 64 KiB, as the capsules do: Python allocates the whole size per
  recv, and above glibc's mmap threshold that costs more than the trip).
  This VM's wakeup latency drifts 2-5x over minutes; this row, measured in
  the same run, tells what the machine could do at that moment.
  ``raw socketpair, polled``: the same, both ends polling 100 us before
  they sleep, as capsules do by default.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import aem_loop
from aem_loop.capsules import CapsulePool, prestart
from aem_loop.capsules._wire import RBUF, SPIN, recv_into_spinning

WORKERS = 2
KIB64 = b"x" * 65536


def trivial(x: int) -> int:
    return x + 1


def echo(b: bytes) -> bytes:
    return b


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def _latency(one: Callable[[Any], Any], arg: Any, n: int) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm
        one(arg)
    ts = []
    perf = time.perf_counter
    for _ in range(n):
        t = perf()
        one(arg)
        ts.append(perf() - t)
    return _pct(ts)


def _fork_call(fn: Callable[[Any], Any], arg: Any) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            data = pickle.dumps(fn(arg))
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks))


def _throughput_submit(submit: Callable[..., Any], fn: Any, arg: Any, n: int) -> float:
    t = time.perf_counter()
    futs = [submit(fn, arg) for _ in range(n)]
    for f in futs:
        f.result()
    return n / (time.perf_counter() - t)


def measure(kind: str, n: int, n_big: int) -> dict[str, Any]:
    """All figures for one way of calling; the pool is created and shut down here."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if kind.startswith("capsule"):
        spin = 0.0 if kind.endswith("spin=0") else SPIN
        kind = kind.split(",")[0]
        # cold: the pool forks its zygote when it is created
        t0 = time.perf_counter()
        pool = CapsulePool(WORKERS, reserve=0, spin=spin)
        pool.call(trivial, 1) if kind == "capsule call" else pool.submit(trivial, 1).result()
        out["first_result_cold_ms"] = (time.perf_counter() - t0) * 1e3
        pool.shutdown()
        # as designed: the zygote forked early (capsules.prestart at start-up)
        prestart()
        time.sleep(0.2)  # the program goes on with its start-up meanwhile
        t0 = time.perf_counter()
        pool = CapsulePool(WORKERS, reserve=0, spin=spin)
        pool.call(trivial, 1) if kind == "capsule call" else pool.submit(trivial, 1).result()
        out["first_result_ms"] = (time.perf_counter() - t0) * 1e3
        pool.wait_ready(10)
        try:
            if kind == "capsule call":
                out["trivial"] = _latency(lambda a: pool.call(trivial, a), 1, n)
                out["64KiB"] = _latency(lambda a: pool.call(echo, a), KIB64, n_big)
                out["throughput"] = _throughput_submit(pool.submit, trivial, 1, n)
                out["throughput_64KiB"] = _throughput_submit(pool.submit, echo, KIB64, n_big)
            elif kind == "capsule submit":
                out["trivial"] = _latency(lambda a: pool.submit(trivial, a).result(), 1, n)
                out["64KiB"] = _latency(lambda a: pool.submit(echo, a).result(), KIB64, n_big)
                out["throughput"] = _throughput_submit(pool.submit, trivial, 1, n)
                out["throughput_64KiB"] = _throughput_submit(pool.submit, echo, KIB64, n_big)
            else:  # capsule run
                with asyncio.Runner(loop_factory=aem_loop.new_event_loop) as runner:
                    out.update(runner.run(_run_async(pool, n, n_big)))
        finally:
            pool.shutdown()
        return out
    if kind.startswith("raw socketpair"):
        import socket

        spin = SPIN if kind.endswith("polled") else 0.0
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            a.close()
            buf = bytearray(RBUF)
            view = memoryview(buf)
            while True:
                k = recv_into_spinning(b, buf, spin)
                if not k:
                    os._exit(0)
                b.sendall(view[:k])
        b.close()
        try:
            small = b"x" * 60

            rbuf = bytearray(RBUF)

            def rt(msg: bytes) -> None:
                a.sendall(msg)
                got = 0
                while got < len(msg):
                    got += recv_into_spinning(a, rbuf, spin)

            out["first_result_ms"] = 0.0
            out["trivial"] = _latency(rt, small, n)
            out["64KiB"] = _latency(rt, KIB64, n_big)
            out["throughput"] = 1e6 / out["trivial"]["p50"]
            out["throughput_64KiB"] = 1e6 / out["64KiB"]["p50"]
        finally:
            a.close()
            os.waitpid(pid, 0)
        return out
    if kind == "fork per call":
        out["first_result_ms"] = _latency(lambda a: _fork_call(trivial, a), 1, 1)["p50"] / 1e3
        m = max(50, n // 20)
        out["trivial"] = _latency(lambda a: _fork_call(trivial, a), 1, m)
        out["64KiB"] = _latency(lambda a: _fork_call(echo, a), KIB64, m)
        lat = out["trivial"]["p50"] / 1e6
        out["throughput"] = 1 / lat
        out["throughput_64KiB"] = 1 / (out["64KiB"]["p50"] / 1e6)
        return out
    if kind == "mp.Pool":
        mpool = mp.get_context("fork").Pool(WORKERS)
        mpool.apply(trivial, (1,))
        out["first_result_ms"] = (time.perf_counter() - t0) * 1e3
        try:
            out["trivial"] = _latency(lambda a: mpool.apply(trivial, (a,)), 1, n)
            out["64KiB"] = _latency(lambda a: mpool.apply(echo, (a,)), KIB64, n_big)
            out["throughput"] = _throughput_submit(
                lambda fn, a: _MPF(mpool.apply_async(fn, (a,))), trivial, 1, n)
            out["throughput_64KiB"] = _throughput_submit(
                lambda fn, a: _MPF(mpool.apply_async(fn, (a,))), echo, KIB64, n_big)
        finally:
            mpool.close()
            mpool.join()
        return out
    method = kind.split()[-1]  # ProcessPool fork / forkserver
    ex = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context(method))
    ex.submit(trivial, 1).result()
    out["first_result_ms"] = (time.perf_counter() - t0) * 1e3
    try:
        for _ in range(WORKERS * 4):  # every worker started and warm
            ex.submit(trivial, 1).result()
        out["trivial"] = _latency(lambda a: ex.submit(trivial, a).result(), 1, n)
        out["64KiB"] = _latency(lambda a: ex.submit(echo, a).result(), KIB64, n_big)
        out["throughput"] = _throughput_submit(ex.submit, trivial, 1, n)
        out["throughput_64KiB"] = _throughput_submit(ex.submit, echo, KIB64, n_big)
    finally:
        ex.shutdown()
    return out


class _MPF:
    """multiprocessing AsyncResult with a .result()."""

    def __init__(self, r: Any) -> None:
        self.r = r

    def result(self) -> Any:
        return self.r.get()


async def _run_async(pool: CapsulePool, n: int, n_big: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    perf = time.perf_counter
    for arg, key, m in ((1, "trivial", n), (KIB64, "64KiB", n_big)):
        fn = trivial if arg == 1 else echo
        for _ in range(min(200, m)):
            await pool.run(fn, arg)
        ts = []
        for _ in range(m):
            t = perf()
            await pool.run(fn, arg)
            ts.append(perf() - t)
        out[key] = _pct(ts)
        t = perf()
        await asyncio.gather(*(pool.run(fn, arg) for _ in range(m)))
        out["throughput" if arg == 1 else "throughput_64KiB"] = m / (perf() - t)
    return out


KINDS = ("raw socketpair", "raw socketpair, polled", "capsule call", "capsule call, spin=0",
         "capsule run", "capsule submit", "ProcessPool fork",
         "ProcessPool forkserver", "mp.Pool", "fork per call")


def run_one(kind: str, n: int, n_big: int) -> dict[str, Any]:
    """measure() in a fresh interpreter (no state shared between the ways)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "aem_loop.bench.capsules_bench", kind, str(n), str(n_big)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
