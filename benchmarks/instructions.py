"""Instructions per echo round trip (valgrind) (see aem_loop.bench.instructions).

    python benchmarks/instructions.py [--loops asyncio,aem-selector] [--api streams]

``aem-loop bench --only instructions`` runs it too.
"""

from aem_loop.bench.instructions import main

if __name__ == "__main__":
    main()
