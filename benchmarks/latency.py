"""Priority latency under a low-priority flood (see aem_loop.bench.latency).

    python benchmarks/latency.py [--quick] [--runs 3] [--out benchmarks/results]
"""

import argparse

from aem_loop.bench.report import run_latency

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run_latency(quick=a.quick, runs=a.runs, duration=a.duration, out=a.out)
