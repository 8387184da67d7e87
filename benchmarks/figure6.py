"""The AEM paper's Figure 6: response time as idle connections grow
(see aem_loop.bench.figure6).

    python benchmarks/figure6.py [--runs 3] [--duration 3] [--out benchmarks/results]

``aem-loop bench --only figure6`` runs it too.
"""

from aem_loop.bench.figure6 import main

if __name__ == "__main__":
    main()
