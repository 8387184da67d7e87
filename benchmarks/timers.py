"""Timer benchmarks (see aem_loop.bench.timers_bench for the workloads).

    python benchmarks/timers.py [--quick] [--runs 3] [--out benchmarks/results]
"""

import argparse

from aem_loop.bench.report import run_timers

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run_timers(quick=a.quick, runs=a.runs, out=a.out)
