"""aiohttp: an urgent route under a flood, and hello world
(see aem_loop.bench.aiohttp_routes).

    python benchmarks/aiohttp_routes.py [--runs 3] [--duration 3] [--out benchmarks/results]
    python benchmarks/aiohttp_routes.py --app hello [--runs 3] [--out benchmarks/results]

``aem-loop bench --only aiohttp`` runs it too.
"""

from aem_loop.bench.aiohttp_routes import main

if __name__ == "__main__":
    main()
