"""A/B of aiohttp hello-world servers loaded at once: cost per request.

For comparing two builds or settings of a loop to within a few percent,
which the hello benchmark (one server loaded at a time, 1 s bursts in
turn) cannot: this VM's speed drifts by tens of percent between seconds,
and each process keeps a speed of its own (memory layout, hash seed) for
as long as it lives.  Here every server (``--serve`` of
``aem_loop.bench.aiohttp_routes``, pinned to CPU 0) is loaded by its own
``wrk -t1 -c50`` (all on CPU 1) at the same time, so that they share
whatever the machine does in a cycle; per cycle, each server's CPU time
per request is compared with the first group's median.  Several processes
per variant (labels that differ only in a trailing number form a group)
average the per-process speeds.

    python tools/hello_ab.py [--cycles 10] [--burst 2] \\
        a1=asyncio:site a2=asyncio:site s1=aem-selector:site s2=aem-selector:site

A server is ``LABEL=LOOP:MODE[:OPTIONS[:SRCDIR]]``: MODE plain, prio or site
(see the hello benchmark), OPTIONS the aem loop's (``time_slice=1.0``),
SRCDIR a source tree to import aem_loop from instead (PYTHONPATH), for a
build to compare.  Sharing a CPU between several servers makes each poll
find more requests than a server alone sees, so the figures are ratios to
compare variants, not the throughput of one server.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys

from aem_loop.bench.aiohttp_routes import mark, start_hello
from aem_loop.bench.common import machine, stop_all


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--burst", type=int, default=2, help="seconds of load per cycle")
    ap.add_argument("servers", nargs="+", metavar="LABEL=LOOP:MODE[:OPTIONS[:SRCDIR]]")
    a = ap.parse_args(argv)
    specs: dict[str, tuple[str, str, str, str]] = {}
    for spec in a.servers:
        label, sep, rest = spec.partition("=")
        parts = rest.split(":")
        if not sep or not label or not 2 <= len(parts) <= 4:
            ap.error(f"a server is LABEL=LOOP:MODE[:OPTIONS[:SRCDIR]], got {spec!r}")
        if label in specs:
            ap.error(f"label {label!r} given twice")
        loop, mode, opts, src = (*parts, "", "")[:4]
        specs[label] = (loop, mode, opts, src)
    procs: dict[str, tuple[subprocess.Popen[str], int]] = {}
    cost: dict[str, list[float]] = {label: [] for label in specs}
    try:
        for label, (loop, mode, opts, src) in specs.items():
            env = dict(os.environ, PYTHONPATH=src) if src else None
            procs[label] = start_hello(loop, mode, opts, env)
        for c in range(a.cycles):
            for p, _ in procs.values():
                mark(p)
            loads = [subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c50",
                                       f"-d{a.burst}s", f"http://127.0.0.1:{port}/"],
                                      stdout=subprocess.DEVNULL)
                     for _, port in procs.values()]
            for w in loads:
                if w.wait():
                    raise SystemExit(f"wrk failed ({w.returncode})")
            for label, (p, _) in procs.items():
                n, cpu = mark(p)[:2]
                cost[label].append(cpu * 1e6 / n if n else float("nan"))
            print(f"cycle {c + 1}/{a.cycles}", file=sys.stderr, flush=True)
    finally:
        stop_all([p for p, _ in procs.values()])
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for label in specs:
        groups[label.rstrip("0123456789") or label].append(label)
    first = next(iter(groups.values()))
    print(f"{machine()}; {len(specs)} servers loaded at once, {a.cycles} cycles of {a.burst} s")
    print("speed = the first group's CPU time per request / this group's, per cycle "
          "(group medians); median over the cycles, and their range")
    for g, labels in groups.items():
        per = [statistics.median(cost[x][c] for x in first)
               / statistics.median(cost[x][c] for x in labels) for c in range(a.cycles)]
        us = statistics.median(statistics.median(cost[x]) for x in labels)
        print(f"{g:12s} n={len(labels)}  {us:7.2f} us CPU per request  speed "
              f"{statistics.median(per):.3f} ({min(per):.3f}-{max(per):.3f})  "
              f"{' '.join(specs[labels[0]][:3]).strip()}")


if __name__ == "__main__":
    main()
