"""vmtable benchmarks: allocator speed, vzone hand-off, bounded floods, echo.

    python benchmarks/vmtable.py [--quick] [--runs 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import tracemalloc
import zlib
from multiprocessing.connection import Connection, Pipe
from typing import Any

import numpy as np
from rich.table import Table

from ..vmtable import VMTable, VMTableExhausted
from .common import machine, make_console, median, pin

console = make_console()
MIXED = [64, 100, 512, 1000, 1500, 4096, 9000, 16384, 65536]


def bench_alloc(ops: int) -> dict[str, float]:
    """ns per alloc+release: fixed 1 KiB and mixed sizes, vmtable vs bytearray."""
    out = {}
    rng = random.Random(1)
    mixed = [rng.choice(MIXED) for _ in range(ops)]
    t = VMTable(16 << 20, min_block=64)
    for name, sizes in (("fixed 1KiB", [1024] * ops), ("mixed 64B-64KiB", mixed)):
        # keep 64 live blocks, FIFO, as a server with 64 reads in flight
        live: list[Any] = []
        t0 = time.perf_counter()
        for n in sizes:
            live.append(t.alloc(n))
            if len(live) > 64:
                live.pop(0).release()
        for b in live:
            b.release()
        out[f"vmtable {name}"] = (time.perf_counter() - t0) / ops * 1e9
        live = []
        t0 = time.perf_counter()
        for n in sizes:
            live.append(bytearray(n))
            if len(live) > 64:
                live.pop(0)
        out[f"bytearray {name}"] = (time.perf_counter() - t0) / ops * 1e9
    t.close()
    return out


def _worker(conn: Connection, table: VMTable) -> None:
    pin(1)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if isinstance(msg, tuple):  # a vzone descriptor: read the block in place
            v = table.view(*msg)
            crc = zlib.crc32(v)
            v.release()
        else:  # the bytes themselves, unpickled from the pipe
            crc = zlib.crc32(msg)
        conn.send(crc)


def bench_handoff(size: int, rounds: int) -> dict[str, dict[str, float]]:
    """Round trip of handing *size* bytes to a worker process and back a CRC."""
    pin(0)
    table = VMTable(4 << 20, zone="vzone", min_block=4096)
    parent, child = Pipe()
    pid = os.fork()
    if pid == 0:
        parent.close()
        try:
            _worker(child, table)
        finally:
            os._exit(0)
    child.close()
    data = os.urandom(size)
    block = table.alloc(size)
    block[:] = data
    desc = block.descriptor()
    want = zlib.crc32(data)
    res: dict[str, list[float]] = {"vzone descriptor": [], "pickled bytes": []}
    try:
        for _ in range(rounds):
            for name, msg in (("vzone descriptor", desc), ("pickled bytes", data)):
                t0 = time.perf_counter()
                parent.send(msg)
                got = parent.recv()
                res[name].append(time.perf_counter() - t0)
                assert got == want
        parent.send(None)
    finally:
        os.waitpid(pid, 0)
        parent.close()
        block.release()
        table.close()
    return {k: {"p50_us": float(np.percentile(v, 50) * 1e6),
                "p99_us": float(np.percentile(v, 99) * 1e6)} for k, v in res.items()}


def bench_flood(steps: int, pool: int) -> dict[str, dict[str, float]]:
    """A producer allocating mixed sizes twice as fast as its consumer frees.

    vmtable bounds memory by the pool (excess requests are refused and counted,
    the backpressure signal); plain allocation keeps growing.
    """
    rng = random.Random(2)
    sizes = [rng.choice(MIXED) for _ in range(steps)]
    out = {}
    for name in ("vmtable", "bytearray"):
        tracemalloc.start()
        table = VMTable(pool, min_block=64) if name == "vmtable" else None
        base = tracemalloc.get_traced_memory()[0]
        live: list[Any] = []
        refused = 0
        for i, n in enumerate(sizes):
            if table is not None:
                try:
                    live.append(table.alloc(n))
                except VMTableExhausted:
                    refused += 1
            else:
                live.append(bytearray(n))
            if i % 2 and live:
                b = live.pop(0)
                if table is not None:
                    b.release()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        for b in live:
            if table is not None:
                b.release()
        if table is not None:
            table.close()
        out[name] = {"peak_MiB": peak / 2**20, "refused": refused}
    return out


def bench_echo(runs: int, duration: float) -> dict[str, dict[str, float]]:
    from . import echo

    res: dict[str, dict[str, list[float]]] = {}
    for _ in range(runs):
        for lp in ("asyncio", "aem-selector", "uvloop", "aem-uvloop"):
            for kind in ("protocol", "vmtable"):
                rps = echo.run_cell(lp, kind, 50, 10240, duration)
                res.setdefault(lp, {}).setdefault(kind, []).append(rps)
    return {lp: {k: median(v) for k, v in d.items()} for lp, d in res.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    ops = 50_000 if a.quick else 300_000
    lines = [f"vmtable benchmarks; {machine()}", ""]

    allocs = [bench_alloc(ops) for _ in range(a.runs)]
    t = Table(title=f"alloc+release, ns/op (median of {a.runs}, {ops} ops, 64 live)")
    t.add_column("case")
    t.add_column("ns/op", justify="right")
    lines += ["| alloc+release | ns/op |", "|---|---|"]
    for k in allocs[0]:
        v = statistics.median(r[k] for r in allocs)
        t.add_row(k, f"{v:.0f}")
        lines.append(f"| {k} | {v:.0f} |")
    console.print(t)

    h = bench_handoff(1 << 20, 200 if a.quick else 1000)
    t = Table(title="1 MiB hand-off to a worker process (round trip, CRC back)")
    for c in ("method", "p50 us", "p99 us"):
        t.add_column(c)
    lines += ["", "| 1 MiB hand-off | p50 us | p99 us |", "|---|---|---|"]
    for k, lat in h.items():
        t.add_row(k, f"{lat['p50_us']:.0f}", f"{lat['p99_us']:.0f}")
        lines.append(f"| {k} | {lat['p50_us']:.0f} | {lat['p99_us']:.0f} |")
    console.print(t)

    f = bench_flood(20_000 if a.quick else 100_000, 8 << 20)
    t = Table(title="flood: allocations outpace releases 2:1 (pool 8 MiB)")
    for c in ("allocator", "peak MiB", "refused"):
        t.add_column(c)
    lines += ["", "| flood (pool 8 MiB) | peak MiB | refused |", "|---|---|---|"]
    for k, fl in f.items():
        t.add_row(k, f"{fl['peak_MiB']:.1f}", str(fl["refused"]))
        lines.append(f"| {k} | {fl['peak_MiB']:.1f} | {fl['refused']} |")
    console.print(t)

    e = bench_echo(a.runs, 0.5 if a.quick else 1.5)
    t = Table(title="echo 10 KiB x 50 conns, round trips/s: BlockProtocol vs Protocol")
    for c in ("loop", "Protocol", "BlockProtocol", "ratio"):
        t.add_column(c)
    lines += ["", "| echo 10KiB x50 | Protocol | BlockProtocol | ratio |", "|---|---|---|---|"]
    for lp, d in e.items():
        r = d["vmtable"] / d["protocol"]
        t.add_row(lp, f"{d['protocol']:,.0f}", f"{d['vmtable']:,.0f}", f"{r:.2f}x")
        lines.append(f"| {lp} | {d['protocol']:,.0f} | {d['vmtable']:,.0f} | {r:.2f}x |")
    console.print(t)
    console.print(f"[dim]{machine()}[/dim]")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "vmtable.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(os.path.join(a.out, "vmtable.json"), "w") as fh:
            import json

            json.dump({"alloc": allocs, "handoff": h, "flood": f, "echo": e,
                       "machine": machine()}, fh, indent=1)


if __name__ == "__main__":
    main()


