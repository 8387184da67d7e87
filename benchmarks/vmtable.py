"""vmtable benchmarks (see aem_loop.bench.vmtable_bench).

    python benchmarks/vmtable.py [--quick] [--runs 3] [--out benchmarks/results]
"""

from aem_loop.bench.vmtable_bench import main

if __name__ == "__main__":
    main()
