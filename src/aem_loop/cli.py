"""The ``aem-loop`` command.

- ``aem-loop run [--backend B] [-o NAME=VALUE]... SCRIPT [ARGS]`` (or ``-m
  MODULE [ARGS]``) runs an unmodified asyncio program with aem as its loop,
  as ``python SCRIPT`` / ``python -m MODULE`` would run it: ``asyncio.run``,
  ``asyncio.Runner`` and ``asyncio.new_event_loop`` in it make aem loops.
- ``aem-loop bench``: the benchmarks against stock asyncio and uvloop.
- ``aem-loop httpd [DIR] [--port P] [--backend B]``: AEMhttpd, a
  single-threaded static file server on the events API (``aem_loop.httpd``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from typing import Any

from ._options import parse_option

_RUN_EPILOG = """examples:
  aem-loop run server.py --port 8080
  aem-loop run --backend uvloop -o time_slice=0.0005 -m mypackage.app
Everything after SCRIPT (or -m MODULE) is the program's own arguments."""


def _option(text: str) -> tuple[str, Any]:
    try:
        return parse_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(a: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    import os
    import runpy

    from .api import EventLoopPolicy

    if a.target[:1] == ["--"]:
        del a.target[0]
    if a.module is None and not a.target:
        ap.error("run: give a SCRIPT or -m MODULE")
    options = dict(a.option or [])
    try:
        policy = EventLoopPolicy(backend=a.backend, **options)  # checks the options now
    except (TypeError, ValueError, ImportError) as exc:
        print(f"aem-loop run: {exc}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        # 3.14 deprecates the policy system; it is still what asyncio.run()
        # and asyncio.new_event_loop() consult when given no loop_factory.
        warnings.simplefilter("ignore", DeprecationWarning)
        import asyncio

        asyncio.set_event_loop_policy(policy)
    if a.module is not None:
        sys.argv = [a.module, *a.target]
        runpy.run_module(a.module, run_name="__main__", alter_sys=True)
    else:
        script, *args = a.target
        sys.argv = [script, *args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["httpd"]:
        from .httpd import main as httpd_main

        return httpd_main(args[1:])
    ap = argparse.ArgumentParser(prog="aem-loop", description="aem_loop tools")
    ap.add_argument("--version", action="version", version=f"aem-loop {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an asyncio program (a script or -m module) on aem",
                       epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--backend", default="selector", help="selector (default) or uvloop")
    r.add_argument("-o", "--option", action="append", type=_option, metavar="NAME=VALUE",
                   help="a loop option, e.g. time_slice=0.0005, aging=none, fast_path=false")
    r.add_argument("-m", dest="module", metavar="MODULE", help="run a module as python -m does")
    r.add_argument("target", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS]")
    sub.add_parser("httpd", help="serve a directory over HTTP/1.1 with AEMhttpd "
                   "(aem-loop httpd --help)", add_help=False)
    b = sub.add_parser("bench", help="echo and priority-latency benchmarks vs asyncio and uvloop")
    b.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    b.add_argument("--runs", type=int, default=3, help="repetitions per cell (median)")
    b.add_argument("--only", choices=("echo", "latency", "timers", "capsules", "vmtable",
                                       "rounds", "events", "aiohttp", "figure6",
                                       "instructions"), default=None,
                   help="one benchmark (all but echo and latency run only when asked; "
                        "aiohttp and figure6 need wrk, instructions valgrind)")
    b.add_argument("--out", default=None, help="directory for JSON and Markdown results")
    b.add_argument("--plot", default=None, metavar="DIR",
                   help="write PNG plots of the results to DIR (matplotlib)")
    a = ap.parse_args(args)
    if a.cmd == "run":
        return _run(a, r)
    if a.runs < 1:
        ap.error("--runs must be >= 1")
    if a.plot and not a.out:
        ap.error("--plot draws the results written to --out DIR: give both")
    try:
        from .bench.report import run_capsules, run_echo, run_latency, run_timers
    except ModuleNotFoundError as exc:  # rich, numpy or uvloop
        print(f"aem-loop bench needs the bench extra ({exc.name} is missing): "
              "pip install 'aem-loop[bench]'", file=sys.stderr)
        return 2

    if a.only in (None, "echo"):
        run_echo(quick=a.quick, runs=a.runs, duration=None, out=a.out)
    if a.only in (None, "latency"):
        run_latency(quick=a.quick, runs=a.runs, duration=None, out=a.out)
    if a.only == "timers":
        run_timers(quick=a.quick, runs=a.runs, out=a.out)
    if a.only == "capsules":
        run_capsules(quick=a.quick, runs=a.runs, out=a.out)
    common = [*(["--quick"] if a.quick else []), *(["--out", a.out] if a.out else [])]
    if a.only == "vmtable":
        from .bench import vmtable_bench

        vmtable_bench.main(["--runs", str(a.runs), *common])
    if a.only == "rounds":
        from .bench import rounds

        rounds.main(["--runs", str(a.runs), *(["--out", a.out] if a.out else [])])
    if a.only in ("aiohttp", "figure6") and not shutil.which("wrk"):
        print(f"aem-loop bench --only {a.only} needs wrk, the HTTP load generator "
              "(Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    out = ["--out", a.out] if a.out else []
    runs = ["--runs", str(a.runs)]
    if a.only == "events":
        from .bench import events_bench

        events_bench.main([*runs, "--duration", "1" if a.quick else "2", *out])
    if a.only == "aiohttp":
        from .bench import aiohttp_routes

        aiohttp_routes.main([*runs, "--duration", "1" if a.quick else "3", *out])
        aiohttp_routes.main(["--app", "hello", *runs, "--duration", "1" if a.quick else "2",
                             *(["--procs", "1", "--cycles", "2"] if a.quick else []), *out])
    if a.only == "figure6":
        from .bench import figure6

        figure6.main([*runs, "--duration", "1" if a.quick else "3", *out,
                      *(["--idle", "0,1000,10000"] if a.quick else [])])
    if a.only == "instructions":
        from .bench import instructions

        instructions.main([])
    if a.plot:
        from .bench.plot import plot_all

        for path in plot_all(a.out, a.plot):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
