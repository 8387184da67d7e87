"""Events against a plain protocol (see aem_loop.bench.events_bench).

    python benchmarks/events.py [--runs 3] [--duration 2] [--out benchmarks/results]

``aem-loop bench --only events`` runs it too.
"""

from aem_loop.bench.events_bench import main

if __name__ == "__main__":
    main()
