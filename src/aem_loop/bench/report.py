"""Runs the benchmarks across loops with progress, prints and saves the tables."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from rich.progress import Progress
from rich.table import Table

from . import echo, latency
from .common import LOOPS, machine, make_console, median

# Piped or redirected, rich would cut tables to 80 columns: print them whole.
console = make_console()

# (reference, aem) pairs compared in the echo table
_PAIRS = (("asyncio", "aem-selector"), ("uvloop", "aem-uvloop"))


def _save(out: str | None, name: str, data: dict[str, Any], markdown: str) -> None:
    if not out:
        return
    d = pathlib.Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(data, indent=1))
    (d / f"{name}.md").write_text(markdown)


def _md_head(*cols: str) -> list[str]:
    """A Markdown table's header row and separator."""
    return ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]


def echo_pairs(loops: Sequence[str]) -> list[tuple[str, str]]:
    """(reference, aem loop) for every aem loop (variants included) whose
    reference (same flags) is in *loops*."""
    pairs = []
    for aem in loops:
        if not aem.startswith("aem-"):
            continue
        base, _, flags = aem.partition(",")
        for ref, a in _PAIRS:
            if base.split("/")[0] == a:
                r = ref + ("," + flags if flags else "")
                if r in loops:
                    pairs.append((r, aem))
    return pairs


def run_echo(*, quick: bool, runs: int, duration: float | None, out: str | None,
             loops: Sequence[str] = LOOPS, burst: float = echo.BURST) -> dict[str, Any]:
    """Every cell *runs* times; a run serves it on all *loops* at once and
    loads them in turns of *burst* seconds for *duration* seconds each (see
    aem_loop.bench.echo).  A ratio is the median, over every cycle of every
    run, of the aem loop's burst over its reference's burst in that cycle."""
    duration = duration or (0.5 if quick else 5.0)
    cycles = max(1, round(duration / burst))
    cells = echo.cells(quick)
    results: dict[str, dict[str, list[float]]] = {}  # round trips/s
    per_cpu: dict[str, dict[str, list[float]]] = {}  # round trips per server CPU-s
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("echo", total=len(cells) * runs)
        for _ in range(runs):
            for kind, conns, size in cells:
                key = f"{kind} {size // 1024}KiB x{conns}"
                rates = echo.run_interleaved(list(loops), kind, conns, size, burst, cycles)
                for lp, r in rates.items():
                    results.setdefault(key, {}).setdefault(lp, []).extend(
                        round(x) for x in r["rps"])
                    per_cpu.setdefault(key, {}).setdefault(lp, []).extend(
                        round(x) for x in r["per_cpu_s"])
                prog.advance(task)
    pairs = echo_pairs(loops)
    title = (f"{runs} runs x {cycles} cycles of {burst}s bursts per loop; ratios are "
             f"medians of the per-cycle ratios")
    if loops and all(lp.endswith(",cold") for lp in loops):
        title += "; servers without the allocator warm-up"
        name = "echo-cold"
    else:
        name = "echo"
    table = Table(title=f"echo round trips/s, median burst, and aem/reference ({title})")
    keys = list(results)
    ref_of = {aem: ref for ref, aem in pairs}
    md = [f"Echo, round trips/s: median burst, and for aem servers the ratio to their "
          f"reference (stock asyncio for aem-selector, uvloop for aem-uvloop); {title} "
          f"(all servers served at once, loaded in turns). Servers: /prio = a priority "
          f"used in the process before serving, /high = the server created under "
          f"Priority.HIGH; {machine()}", "", *_md_head("server", *keys)]
    table.add_column("server")
    for key in keys:
        table.add_column(key, justify="right")
    def medians(per: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
        return ({lp: median(v) for lp, v in per.items()},
                {f"{aem}/{ref}": median([a / b for a, b in zip(per[aem], per[ref], strict=True)])
                 for ref, aem in pairs})

    summary: dict[str, Any] = {}
    for key, per in results.items():
        med, ratios = medians(per)
        cmed, cratios = medians(per_cpu[key])
        summary[key] = {"median": med, "bursts": per, "ratios": ratios,
                        "per_cpu_s": {"median": cmed, "bursts": per_cpu[key], "ratios": cratios}}

    def rows(part: Any) -> list[list[str]]:
        out = []
        for lp in loops:
            cells_ = [lp]
            for key in keys:
                got = part(summary[key])
                c = f"{got['median'][lp]:,.0f}"
                if lp in ref_of:
                    c += f" ({got['ratios'][f'{lp}/{ref_of[lp]}']:.3f}x)"
                cells_.append(c)
            out.append(cells_)
        return out

    for row in rows(lambda cell: cell):
        table.add_row(*row)
        md.append("| " + " | ".join(row) + " |")
    console.print(table)
    cpu_table = Table(title="echo round trips per second of server CPU time, median burst, "
                            "and aem/reference (the same bursts)")
    md += ["", "Round trips per second of the server's CPU time (its CPU clock read by the "
           "client around each burst), the same bursts: median, and for aem servers the "
           "median per-cycle ratio to their reference", "", *_md_head("server", *keys)]
    cpu_table.add_column("server")
    for key in keys:
        cpu_table.add_column(key, justify="right")
    for row in rows(lambda cell: cell["per_cpu_s"]):
        cpu_table.add_row(*row)
        md.append("| " + " | ".join(row) + " |")
    console.print(cpu_table)
    console.print(f"[dim]{machine()}[/dim]")
    data = {"machine": machine(), "date": datetime.datetime.now().isoformat(),
            "burst": burst, "cycles": cycles, "runs": runs, "cells": summary}
    _save(out, name, data, "\n".join(md) + "\n")
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
    qs = ("p50", "p99", "p99.9", "max", "gc_max")
    for col in ("loop", "tasks", "p50", "p99", "p99.9", "max", "gc pause"):
        table.add_column(col, justify="right")
    md = [f"Priority latency (probe every 2 ms at CRITICAL, N tasks burning 50 us/step), "
          f"lateness in ms, median of {runs} runs of {duration}s; gc pause: the longest "
          f"garbage-collector pause while probing (it stops any loop); {machine()}", "",
          "| loop | tasks | p50 | p99 | p99.9 | max | gc pause |",
          "|---|---|---|---|---|---|---|"]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for lp in loops:
        for n in counts:
            m = {q: median([r[q] for r in res[lp][n]]) for q in qs}
            summary.setdefault(lp, {})[str(n)] = m
            row = [f"{m[q]:.3f}" for q in qs]
            table.add_row(lp, str(n), *row)
            md.append(f"| {lp} | {n} | " + " | ".join(row) + " |")
    console.print(table)
    console.print(f"[dim]{machine()}[/dim]")
    data = {"machine": machine(), "date": datetime.datetime.now().isoformat(),
            "duration": duration, "runs": runs, "lateness_ms": summary}
    _save(out, "latency", data, "\n".join(md) + "\n")
    return data


def run_timers(*, quick: bool, runs: int, out: str | None,
               loops: Sequence[str] = LOOPS) -> dict[str, Any]:
    """Timer wheel vs asyncio's heap and uvloop's libuv timers (timers_bench)."""
    from . import timers_bench as tb

    sizes = (100_000,) if quick else (100_000, 1_000_000)
    pdur = 1.0 if quick else 3.0
    slacks = (0.0, 0.005, 0.02)
    aem = [lp for lp in loops if lp.startswith("aem-")]
    jobs: list[tuple[str, tuple[Any, ...]]] = []
    for n in sizes:
        jobs += [("bulk", (lp, n)) for lp in loops] + [("churn", (lp, n)) for lp in loops]
        jobs.append(("floor", (n,)))
    jobs += [("memory", (lp, 100_000)) for lp in loops]
    jobs += [("periodic", (lp, 1000, pdur)) for lp in loops]
    jobs += [("slack", (lp, 10_000, pdur, s)) for lp in aem for s in slacks]
    res: dict[str, list[dict[str, float]]] = {}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("timers", total=len(jobs) * runs)
        for _ in range(runs):  # interleaved: drift hits every loop alike
            for w, args in jobs:
                res.setdefault(json.dumps([w, *args]), []).append(tb.run_one(w, *args))
                prog.advance(task)

    def med(w: str, *args: Any) -> dict[str, float]:
        rs = res[json.dumps([w, *args])]
        return {k: median([r[k] for r in rs]) for k in rs[0]}

    md = [f"Timers, medians of {runs} runs, each measurement in a fresh interpreter; "
          f"{machine()}", ""]
    data: dict[str, Any] = {"machine": machine(), "date": datetime.datetime.now().isoformat(),
                            "runs": runs, "raw": res}
    t = Table(title="schedule + cancel (delays 100..400 s), ns per timer; pause in ms")
    for c in ("workload", "N", *loops, "asyncio/aem-sel", "uvloop/aem-uv"):
        t.add_column(c, justify="right")
    md += ["Schedule N timers then cancel them all (bulk: ns per timer, schedule + cancel + "
           "the next loop iteration), and churn (N pending, 2N times cancel one + schedule "
           "one: ns per operation; 'churn, no GC' without the garbage collector's time, "
           "which stock asyncio's cancelled handles left in its heap make run over every "
           "pending timer); speed-up = reference time / aem time.", "",
           *_md_head("workload", "N", *loops, "speed-up aem-sel vs asyncio",
                     "speed-up aem-uv vs uvloop")]
    pauses = ["", "Longest loop iteration (ms): bulk = the iteration after the cancels; "
              "churn = longest of the iterations between operations, without GC pauses "
              "(GC in parentheses included); churn, 1000 ops = the longest run of 1000 "
              "operations (cancel + call_later) between iterations, without GC pauses.", "",
              *_md_head("workload", "N", *loops)]
    for n in sizes:
        for w, workload, key in (("bulk", "bulk", "total_ns"), ("churn", "churn", "op_ns"),
                                 ("churn, no GC", "churn", "op_ns_excl_gc")):
            m = {lp: med(workload, lp, n) for lp in loops}
            r1 = m["asyncio"][key] / m["aem-selector"][key] if "aem-selector" in m else 0
            r2 = m["uvloop"][key] / m["aem-uvloop"][key] if "aem-uvloop" in m else 0
            row = [f"{m[lp][key]:,.0f}" for lp in loops]
            t.add_row(w, f"{n:,}", *row, f"{r1:.2f}x", f"{r2:.2f}x")
            md.append(f"| {w} | {n:,} | " + " | ".join(row) + f" | {r1:.2f}x | {r2:.2f}x |")
            label = w
            if w == "bulk":
                prow = [f"{m[lp]['pause_ms']:.2f}" for lp in loops]
            elif w == "churn":
                prow = [f"{m[lp]['max_iteration_ms_excl_gc']:.2f} "
                        f"({m[lp]['max_iteration_ms']:.0f})" for lp in loops]
            else:
                label = "churn, 1000 ops"
                prow = [f"{m[lp]['max_1000_ops_ms']:.2f}" for lp in loops]
            pauses.append(f"| {label} | {n:,} | " + " | ".join(prow) + " |")
            data.setdefault("speed", {})[f"{w} {n}"] = {
                "median": m, "asyncio_over_aem_selector": r1, "uvloop_over_aem_uvloop": r2}
    console.print(t)
    md += ["", "Floor: building the handles alone (object + context copy, as any call_later "
           "returning an asyncio TimerHandle must), nothing scheduled or cancelled; the "
           "largest bulk speed-up over asyncio a pure-Python loop can reach is asyncio's "
           "bulk time / this.", "", "| N | ns per handle | asyncio bulk / floor |", "|---|---|---|"]
    for n in sizes:
        fl = med("floor", n)["total_ns"]
        ceiling = med("bulk", "asyncio", n)["total_ns"] / fl if "asyncio" in loops else 0
        md.append(f"| {n:,} | {fl:,.0f} | {ceiling:.2f}x |")
        console.print(f"floor N={n:,}: {fl:,.0f} ns per handle; asyncio bulk / floor "
                      f"{ceiling:.2f}x")
        data.setdefault("floor", {})[str(n)] = {"ns": fl, "asyncio_bulk_over_floor": ceiling}
    md += pauses
    mem = {lp: med("memory", lp, 100_000)["bytes_per_timer"] for lp in loops}
    md += ["", "Memory per pending timer (tracemalloc; uvloop's libuv timers live in C "
           "memory tracemalloc does not see: a lower bound).", "",
           *_md_head(*loops),
           "| " + " | ".join(f"{mem[lp]:.0f} B" for lp in loops) + " |"]
    data["bytes_per_timer"] = mem
    pt = Table(title=f"2 ms periodic job under 1000 busy tasks, lateness ms ({pdur}s)")
    for c in ("loop", "how", "p50", "p99", "max", "runs", "missed"):
        pt.add_column(c, justify="right")
    md += ["", f"Periodic job every 2 ms while 1000 tasks burn 50 us per step ({pdur} s "
           f"after {tb.WARMUP} s not counted): lateness in ms. aem: call_every at CRITICAL, "
           "every tick counted (a skipped tick with its own lateness); asyncio/uvloop: a "
           "`while True: await asyncio.sleep(0.002)` loop, each wakeup.", "",
           "| loop | how | p50 | p99 | max | runs | missed |", "|---|---|---|---|---|---|---|"]
    for lp in loops:
        pm = med("periodic", lp, 1000, pdur)
        how = "call_every CRITICAL" if lp.startswith("aem-") else "sleep loop"
        row = [how, f"{pm['p50']:.3f}", f"{pm['p99']:.3f}", f"{pm['max']:.3f}",
               f"{pm['runs']:.0f}", f"{pm['missed']:.0f}"]
        pt.add_row(lp, *row)
        md.append(f"| {lp} | " + " | ".join(row) + " |")
        data.setdefault("periodic_ms", {})[lp] = pm
    console.print(pt)
    st = Table(title="10k re-arming timers: loop wakeups/s that fired timers")
    for c in ("loop", "timer_slack", "wakeups/s", "timers/s", "saved vs slack 0"):
        st.add_column(c, justify="right")
    md += ["", f"Slack: 10k timers re-armed on expiry after 50..150 ms, {pdur} s; wakeups per "
           "second that fired timers, by loop option timer_slack.", "",
           "| loop | timer_slack | wakeups/s | timers/s | wakeups/s saved vs slack 0 |",
           "|---|---|---|---|---|"]
    for lp in aem:
        base = med("slack", lp, 10_000, pdur, 0.0)["wakeups_per_s"]
        for s in slacks:
            sm = med("slack", lp, 10_000, pdur, s)
            row = [f"{s * 1000:g} ms", f"{sm['wakeups_per_s']:,.0f}",
                   f"{sm['timers_per_s']:,.0f}", f"{base - sm['wakeups_per_s']:,.0f}"]
            st.add_row(lp, *row)
            md.append(f"| {lp} | " + " | ".join(row) + " |")
            data.setdefault("slack", {}).setdefault(lp, {})[str(s)] = sm
    console.print(st)
    console.print(f"[dim]{machine()}[/dim]")
    _save(out, "timers", data, "\n".join(md) + "\n")
    return data


def run_capsules(*, quick: bool, runs: int, out: str | None) -> dict[str, Any]:
    """Capsules vs ProcessPoolExecutor, multiprocessing.Pool, fork per call."""
    from . import capsules_bench as cb

    n, n_big = (1000, 200) if quick else (5000, 1000)
    res: dict[str, list[dict[str, Any]]] = {}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("capsules", total=len(cb.KINDS) * runs)
        for _ in range(runs):  # interleaved: drift hits every way alike
            for kind in cb.KINDS:
                res.setdefault(kind, []).append(cb.run_one(kind, n, n_big))
                prog.advance(task)

    def med(kind: str, *path: str) -> float:
        vals = []
        for r in res[kind]:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(v)
        return median(vals)

    cols = ("trivial p50 us", "trivial p99 us", "64KiB p50 us", "64KiB p99 us",
            "calls/s", "64KiB calls/s", "first result ms", "cold first result ms")
    t = Table(title=f"run a function in another process (2 workers; median of {runs})")
    t.add_column("way")
    for c in cols:
        t.add_column(c, justify="right")
    md = [f"Capsules, medians of {runs} runs ({n} trivial and {n_big} 64 KiB calls each, "
          f"every way in a fresh interpreter, 2 workers). First result: from creating "
          f"the pool to the first answer; for capsules with the zygote forked early "
          f"(capsules.prestart(), as designed), cold: forked by the pool itself; "
          f"{machine()}", "", *_md_head("way", *cols)]
    summary: dict[str, dict[str, float]] = {}
    for kind in cb.KINDS:
        m = {
            "trivial_p50": med(kind, "trivial", "p50"), "trivial_p99": med(kind, "trivial", "p99"),
            "big_p50": med(kind, "64KiB", "p50"), "big_p99": med(kind, "64KiB", "p99"),
            "throughput": med(kind, "throughput"),
            "throughput_64KiB": med(kind, "throughput_64KiB"),
            "first_result_ms": med(kind, "first_result_ms"),
            "first_result_cold_ms": (med(kind, "first_result_cold_ms")
                                     if "first_result_cold_ms" in res[kind][0]
                                     else med(kind, "first_result_ms")),
        }
        summary[kind] = m
        row = [f"{m['trivial_p50']:.1f}", f"{m['trivial_p99']:.1f}", f"{m['big_p50']:.1f}",
               f"{m['big_p99']:.1f}", f"{m['throughput']:,.0f}", f"{m['throughput_64KiB']:,.0f}",
               "-" if kind.startswith("raw") else f"{m['first_result_ms']:.2f}",
               "-" if kind.startswith("raw") else f"{m['first_result_cold_ms']:.2f}"]
        t.add_row(kind, *row)
        md.append(f"| {kind} | " + " | ".join(row) + " |")
    cap = summary["capsule call"]["trivial_p50"]
    cap0 = summary["capsule call, spin=0"]["trivial_p50"]
    ratios = {
        "warm ProcessPool fork / capsule call": summary["ProcessPool fork"]["trivial_p50"] / cap,
        "warm ProcessPool forkserver / capsule call":
            summary["ProcessPool forkserver"]["trivial_p50"] / cap,
        "fork per call / capsule call": summary["fork per call"]["trivial_p50"] / cap,
        "capsule call / raw socketpair, polled":
            cap / summary["raw socketpair, polled"]["trivial_p50"],
        "capsule call, spin=0 / raw socketpair":
            cap0 / summary["raw socketpair"]["trivial_p50"],
        "ProcessPool fork / capsule run":
            summary["ProcessPool fork"]["trivial_p50"] / summary["capsule run"]["trivial_p50"],
        "ProcessPool fork / capsule submit":
            summary["ProcessPool fork"]["trivial_p50"] / summary["capsule submit"]["trivial_p50"],
    }
    md += ["", "Ratios of trivial-call p50 latency:", ""]
    md += [f"- {k}: {v:.2f}x" for k, v in ratios.items()]
    console.print(t)
    for k, v in ratios.items():
        console.print(f"{k}: {v:.2f}x")
    console.print(f"[dim]{machine()}[/dim]")
    data = {"machine": machine(), "date": datetime.datetime.now().isoformat(), "runs": runs,
            "median": summary, "ratios": ratios, "raw": res}
    _save(out, "capsules", data, "\n".join(md) + "\n")
    return data
