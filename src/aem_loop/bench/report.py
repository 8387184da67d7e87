"""Runs the benchmarks across loops with progress, prints and saves the tables."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import echo, latency
from .common import LOOPS, machine, median

console = Console()

# (reference, aem) pairs compared in the echo table
_PAIRS = (("asyncio", "aem-selector"), ("uvloop", "aem-uvloop"))


def _save(out: str | None, name: str, data: dict[str, Any], markdown: str) -> None:
    if not out:
        return
    d = pathlib.Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(data, indent=1))
    (d / f"{name}.md").write_text(markdown)


def run_echo(*, quick: bool, runs: int, duration: float | None, out: str | None,
             loops: Sequence[str] = LOOPS) -> dict[str, Any]:
    duration = duration or (0.5 if quick else 1.5)
    cells = echo.cells(quick)
    results: dict[str, dict[str, list[float]]] = {}
    # Each aem loop is measured right after its reference, so that the pair
    # sees the same machine: on a VM whose speed drifts by 2-3x over minutes,
    # the median of these paired ratios is the figure to trust.
    order = [lp for pair in _PAIRS for lp in pair if lp in loops]
    order += [lp for lp in loops if lp not in order]
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("echo", total=len(cells) * len(loops) * runs)
        for _ in range(runs):  # interleave loops so drift hits all equally
            for kind, conns, size in cells:
                key = f"{kind} {size // 1024}KiB x{conns}"
                for lp in order:
                    rps = echo.run_cell(lp, kind, conns, size, duration)
                    results.setdefault(key, {}).setdefault(lp, []).append(rps)
                    prog.advance(task)
    table = Table(title=f"echo round trips/s (median of {runs} x {duration}s)")
    md = [f"Echo, round trips/s, median of {runs} runs of {duration}s each; ratios are "
          f"medians of the {runs} paired runs (aem measured right after its reference); "
          f"{machine()}", "",
          "| cell | " + " | ".join(loops) + " | aem-sel/asyncio | aem-uv/uvloop |",
          "|---" * (len(loops) + 3) + "|"]
    table.add_column("cell")
    for lp in loops:
        table.add_column(lp, justify="right")
    table.add_column("aem-sel/asyncio", justify="right")
    table.add_column("aem-uv/uvloop", justify="right")
    summary = {}
    for key, per in results.items():
        med = {lp: median(v) for lp, v in per.items()}
        r1 = median([a / b for a, b in zip(per["aem-selector"], per["asyncio"], strict=True)])
        r2 = median([a / b for a, b in zip(per["aem-uvloop"], per["uvloop"], strict=True)])
        summary[key] = {"median": med, "runs": per, "aem_selector_vs_asyncio": r1,
                        "aem_uvloop_vs_uvloop": r2}
        row = [f"{med[lp]:,.0f}" for lp in loops]
        table.add_row(key, *row, f"{r1:.2f}x", f"{r2:.2f}x")
        md.append(f"| {key} | " + " | ".join(row) + f" | {r1:.2f}x | {r2:.2f}x |")
    console.print(table)
    console.print(f"[dim]{machine()}[/dim]")
    data = {"machine": machine(), "date": datetime.datetime.now().isoformat(),
            "duration": duration, "runs": runs, "cells": summary}
    _save(out, "echo", data, "\n".join(md) + "\n")
    return data


def run_latency(*, quick: bool, runs: int, duration: float | None, out: str | None,
                loops: Sequence[str] = LOOPS) -> dict[str, Any]:
    duration = duration or (0.5 if quick else 2.0)
    counts = (10, 100, 1000)
    res: dict[str, dict[int, list[dict[str, float]]]] = {}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("latency", total=len(counts) * len(loops) * runs)
        for _ in range(runs):
            for n in counts:
                for lp in loops:
                    res.setdefault(lp, {}).setdefault(n, []).append(
                        latency.run_once(lp, n, duration))
                    prog.advance(task)
    table = Table(title=f"urgent probe lateness, ms (2 ms period; median of {runs} x {duration}s)")
    for col in ("loop", "tasks", "p50", "p99", "p99.9", "max"):
        table.add_column(col, justify="right")
    md = [f"Priority latency (probe every 2 ms at CRITICAL, N tasks burning 50 us/step), "
          f"lateness in ms, median of {runs} runs of {duration}s; {machine()}", "",
          "| loop | tasks | p50 | p99 | p99.9 | max |", "|---|---|---|---|---|---|"]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for lp in loops:
        for n in counts:
            m = {q: median([r[q] for r in res[lp][n]]) for q in ("p50", "p99", "p99.9", "max")}
            summary.setdefault(lp, {})[str(n)] = m
            row = [f"{m[q]:.3f}" for q in ("p50", "p99", "p99.9", "max")]
            table.add_row(lp, str(n), *row)
            md.append(f"| {lp} | {n} | " + " | ".join(row) + " |")
    console.print(table)
    console.print(f"[dim]{machine()}[/dim]")
    data = {"machine": machine(), "date": datetime.datetime.now().isoformat(),
            "duration": duration, "runs": runs, "lateness_ms": summary}
    _save(out, "latency", data, "\n".join(md) + "\n")
    return data
