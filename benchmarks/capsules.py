"""Capsules vs ProcessPoolExecutor, multiprocessing.Pool and fork per call.

    python benchmarks/capsules.py [--quick] [--runs 3] [--out benchmarks/results]

Same as ``aem-loop bench --only capsules ...`` (workloads:
aem_loop.bench.capsules_bench).
"""

import sys

from aem_loop.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "capsules", *sys.argv[1:]]))
