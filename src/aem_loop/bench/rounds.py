"""The fixed cost of one loop iteration: poll, queue, dispatch.

Each iteration of the loop finds F socket readers ready (a byte waits in each
and is never read, so every poll reports them again) and runs one
``call_soon`` chain link besides; the callbacks themselves do nothing.  What
is measured is the loop: ns per iteration (wall time; loops interleaved, one
fresh loop per run, median of the runs) and Python bytecodes per iteration
(``sys.settrace`` opcode events: exact, does not drift with the VM, but
blind to C code such as uvloop's, which shows 0 bytecodes of its own).

    python benchmarks/rounds.py [--runs 7] [--fds 1,10] [--out benchmarks/results]
    aem-loop bench --only rounds [--runs 7] [--out benchmarks/results]

The echo cells with the fewest ready connections per poll pay this cost per
round trip; bigger rounds amortize it.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import socket
import statistics
import sys
import time
from typing import Any

from rich.table import Table

from .common import LOOPS, loop_factory, machine, make_console

console = make_console()


def one_run(name: str, fds: int, iterations: int, trace: bool = False) -> float:
    """ns per iteration, or with *trace* Python bytecodes per iteration."""
    loop = loop_factory(name)()
    pairs = [socket.socketpair() for _ in range(fds)]
    seen = [0]

    def reader() -> None:
        seen[0] += 1

    for a, b in pairs:
        b.send(b"x")
        loop.add_reader(a.fileno(), reader)
    done = loop.create_future()

    def link() -> None:
        if seen[0] >= iterations * fds:
            done.set_result(None)
        else:
            loop.call_soon(link)

    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts["n"] += 1
        return tracer

    loop.call_soon(link)
    try:
        if trace:
            sys.settrace(tracer)
        t0 = time.perf_counter()
        loop.run_until_complete(done)
        dt = time.perf_counter() - t0
    finally:
        sys.settrace(None)
        for a, b in pairs:
            loop.remove_reader(a.fileno())
            a.close()
            b.close()
        loop.close()
    return counts["n"] / iterations if trace else dt / iterations * 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--fds", default="1,10", help="ready readers per poll (comma-separated)")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    fds_list = [int(x) for x in args.fds.split(",")]
    rows: dict[int, dict[str, Any]] = {}
    for fds in fds_list:
        iters = max(1000, args.iterations // fds)
        ns: dict[str, list[float]] = {lp: [] for lp in LOOPS}
        for r in range(args.runs):
            order = LOOPS[r % len(LOOPS):] + LOOPS[:r % len(LOOPS)]  # rotate
            for lp in order:
                ns[lp].append(one_run(lp, fds, iters))
        ops = {lp: one_run(lp, fds, 1000, trace=True) for lp in LOOPS}
        rows[fds] = {"ns": ns, "median_ns": {lp: statistics.median(v) for lp, v in ns.items()},
                     "bytecodes": ops}
    title = f"loop iteration cost, medians of {args.runs} interleaved runs; {machine()}"
    table = Table(title=title)
    md = [f"Loop iteration: F readers ready + one call_soon per poll; {title}", "",
          "| F | asyncio ns | uvloop ns | aem-selector ns | aem-uvloop ns "
          "| aem-sel/asyncio time | aem-uv/uvloop time "
          "| bytecodes asyncio | aem-selector | uvloop | aem-uvloop |",
          "|---" * 11 + "|"]
    for col in ("F", *LOOPS, "aem-sel/asyncio", "aem-uv/uvloop", "bytecodes a/sel/uv/aem-uv"):
        table.add_column(col, justify="right")
    for fds, row in rows.items():
        m = row["median_ns"]
        o = row["bytecodes"]
        r_sel = m["aem-selector"] / m["asyncio"]
        r_uv = m["aem-uvloop"] / m["uvloop"]
        table.add_row(str(fds), *(f"{m[lp]:,.0f}" for lp in LOOPS), f"{r_sel:.2f}x",
                      f"{r_uv:.2f}x", " / ".join(f"{o[lp]:.0f}" for lp in
                                                  ("asyncio", "aem-selector", "uvloop",
                                                   "aem-uvloop")))
        md.append(f"| {fds} | " + " | ".join(f"{m[lp]:,.0f}" for lp in
                                               ("asyncio", "uvloop", "aem-selector", "aem-uvloop"))
                  + f" | {r_sel:.2f}x | {r_uv:.2f}x | "
                  + " | ".join(f"{o[lp]:.0f}" for lp in
                               ("asyncio", "aem-selector", "uvloop", "aem-uvloop")) + " |")
    console.print(table)
    md.append("")
    md.append("time ratios: aem time / reference time (below 1: aem faster).")
    if args.out:
        d = pathlib.Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "rounds.json").write_text(json.dumps(
            {"machine": machine(), "runs": args.runs,
             "rows": {str(k): v for k, v in rows.items()}}, indent=1))
        (d / "rounds.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
