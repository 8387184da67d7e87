"""Plots of benchmark results (matplotlib, in the bench extra).

    python -m aem_loop.bench.plot RESULTS_DIR [OUT_DIR]

draws every plot whose results are in RESULTS_DIR (the JSON files the
benchmarks write with ``--out``) as PNG files in OUT_DIR (default: the same
directory); ``aem-loop bench --plot DIR`` does it after a run.

- ``latency.png``: how late an urgent (CRITICAL) probe runs, p99, against
  the number of busy tasks queued beside it, one line per loop.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["plot_all", "plot_latency"]

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
    fig.text(0.01, 0.01, data.get("machine", ""), fontsize=6, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


_PLOTS = {"latency": plot_latency}


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
