"""Echo server throughput vs stock asyncio and uvloop (see aem_loop.bench.echo).

    python benchmarks/echo.py [--quick] [--runs 5] [--out benchmarks/results]
"""

from aem_loop.bench.echo import main

if __name__ == "__main__":
    main()
