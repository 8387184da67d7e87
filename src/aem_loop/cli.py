"""The ``aem-loop`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    ap = argparse.ArgumentParser(prog="aem-loop", description="aem_loop tools")
    ap.add_argument("--version", action="version", version=f"aem-loop {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="echo and priority-latency benchmarks vs asyncio and uvloop")
    b.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    b.add_argument("--runs", type=int, default=3, help="repetitions per cell (median)")
    b.add_argument("--only", choices=("echo", "latency", "timers", "capsules"), default=None,
                   help="one benchmark (timers and capsules run only when asked)")
    b.add_argument("--out", default=None, help="directory for JSON and Markdown results")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be >= 1")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
