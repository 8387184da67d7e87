"""Timer benchmarks (see aem_loop.bench.timers_bench for the workloads).

    python benchmarks/timers.py [--quick] [--runs 3] [--out benchmarks/results]

Same as ``aem-loop bench --only timers ...``.
"""

import sys

from aem_loop.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "timers", *sys.argv[1:]]))
