"""The fixed cost of one loop iteration (see aem_loop.bench.rounds).

    python benchmarks/rounds.py [--runs 7] [--fds 1,10] [--out benchmarks/results]

Same as ``aem-loop bench --only rounds ...``.
"""

from aem_loop.bench.rounds import main

if __name__ == "__main__":
    main()
