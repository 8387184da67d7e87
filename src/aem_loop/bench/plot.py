"""Plots of benchmark results (matplotlib, in the bench extra).

    python -m aem_loop.bench.plot RESULTS_DIR [OUT_DIR]

draws every plot whose results are in RESULTS_DIR (the JSON files the
benchmarks write with ``--out``) as PNG files in OUT_DIR (default: the same
directory); ``aem-loop bench --plot DIR`` does it after a run.

- ``latency.png``: how late an urgent (CRITICAL) probe runs, p99, against
  the number of busy tasks queued beside it, one line per loop;
- ``echo.png``: echo throughput of the aem backends against stock asyncio
  and uvloop, per cell, with no priority used, a priority in use, and the
  server created under HIGH;
- ``figure6.png``: response time against idle connections, one line per
  server (``benchmarks/figure6.py``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["plot_all", "plot_echo", "plot_figure6", "plot_latency"]

_STYLE = {  # loop -> (colour, marker)
    "asyncio": ("#d62728", "o"),
    "uvloop": ("#ff7f0e", "s"),
    "aem-selector": ("#1f77b4", "^"),
    "aem-uvloop": ("#2ca02c", "v"),
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, data: dict[str, Any], path: str) -> str:
    """The machine the figures come from under the plot, then the PNG."""
    fig.text(0.5, 0.005, data.get("machine", ""), ha="center", fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency(data: dict[str, Any], path: str) -> str:
    """Urgent-probe lateness p99 vs backlog (the latency benchmark's JSON)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    below = False
    for loop, per_n in data["lateness_ms"].items():
        ns = sorted(per_n, key=int)
        xs = [int(n) for n in ns]
        # uvloop's clock counts whole milliseconds: its 0 means "under 1 ms",
        # drawn hollow at 1 ms
        zero = {n for n in ns if per_n[n]["p99"] < 1e-3}
        ys = [1.0 if n in zero else per_n[n]["p99"] for n in ns]
        colour, marker = _STYLE.get(loop, (None, "x"))
        ax.plot(xs, ys, marker=marker, color=colour, label=loop)
        for x, n in zip(xs, ns, strict=True):
            if n in zero:
                below = True
                ax.plot([x], [1.0], marker=marker, markersize=9, color="white",
                        markeredgecolor=colour)
    if below:
        ax.text(0.99, 0.02, "hollow: under 1 ms (a clock that counts whole ms)",
                transform=ax.transAxes, ha="right", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("busy tasks queued (each step 50 µs of CPU)")
    ax.set_ylabel("urgent probe lateness, p99 (ms)")
    ax.set_title("An urgent callback behind a backlog")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(plt, fig, data, path)


def plot_echo(data: dict[str, Any], path: str) -> str:
    """Echo throughput ratios per cell (the echo benchmark's JSON)."""
    plt = _pyplot()
    cells = list(data["cells"])
    series = [  # (ratio key, label, colour, hatch)
        ("aem-selector/asyncio", "aem-selector vs asyncio", _STYLE["aem-selector"][0], ""),
        ("aem-selector/prio/asyncio", "  a priority in use", _STYLE["aem-selector"][0], "//"),
        ("aem-selector/high/asyncio", "  server under HIGH", _STYLE["aem-selector"][0], ".."),
        ("aem-uvloop/uvloop", "aem-uvloop vs uvloop", _STYLE["aem-uvloop"][0], ""),
        ("aem-uvloop/prio/uvloop", "  a priority in use", _STYLE["aem-uvloop"][0], "//"),
        ("aem-uvloop/high/uvloop", "  server under HIGH", _STYLE["aem-uvloop"][0], ".."),
    ]
    series = [s for s in series if any(s[0] in data["cells"][c]["ratios"] for c in cells)]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (key, label, colour, hatch) in enumerate(series):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(cells))]
        ys = [data["cells"][c]["ratios"].get(key, float("nan")) for c in cells]
        ax.bar(xs, ys, width, label=label, color=colour, hatch=hatch,
               alpha=0.9 if not hatch else 0.55, edgecolor="white")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels(cells, fontsize=8)
    ax.set_ylim(0.7, 1.22)  # the legend sits above the bars
    ax.set_ylabel("requests/s vs stock (1 = as fast)")
    ax.set_title(f"Echo throughput against the stock loop it is built on "
                 f"(medians of {data.get('runs', '?')} runs)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, data, path)


def plot_figure6(data: dict[str, Any], path: str) -> str:
    """Response time p50 and p99 against idle connections (figure6.json)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for kind, per in data["median"].items():
        xs = sorted(per, key=int)
        style = ":" if kind == "poll" else ("--" if kind.startswith("aiohttp") else "-")
        for ax, key in zip(axes, ("p50", "p99"), strict=True):
            ax.plot([int(x) for x in xs], [per[x][key] for x in xs], style, marker="o",
                    label=kind, linewidth=2 if kind == "poll" else 1.5)
    for ax, key in zip(axes, ("p50", "p99"), strict=True):
        ax.set_xlabel("idle connections")
        ax.set_ylabel(f"response time {key} (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{data['active']} active connections (wrk) while idle connections grow "
                 f"(medians of {data['runs']} runs)", fontsize=10)
    return _save(plt, fig, data, path)


_PLOTS = {"latency": plot_latency, "echo": plot_echo, "figure6": plot_figure6}


def plot_all(results: str, out: str | None = None) -> list[str]:
    """Every plot whose results JSON is in *results*; the PNG paths written."""
    out = out or results
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fn in _PLOTS.items():
        src = os.path.join(results, f"{name}.json")
        if os.path.exists(src):
            with open(src) as f:
                written.append(fn(json.load(f), os.path.join(out, f"{name}.png")))
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    written = plot_all(args[0], args[1] if len(args) > 1 else None)
    if not written:
        print(f"no results to plot in {args[0]} (run a benchmark with --out first)",
              file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
