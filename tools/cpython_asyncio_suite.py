"""Run CPython's own test_asyncio with aem loops as the loop under test.

For each module, in a fresh subprocess per variant:

- ``asyncio``: stock, the reference for ``aem-selector``;
- ``aem-selector``: the policy makes aem loops and ``asyncio.SelectorEventLoop``
  is aem's selector loop (what test classes construct directly);
- ``uvloop``: uvloop, patched in the same way: the reference for ``aem-uvloop``;
- ``aem-uvloop``: the same with aem's uvloop backend.

Prints a per-module table (passed/failed+errors/skipped per variant, and
tests that pass on the reference but not on aem) and writes the details as
JSON and Markdown.

    python tools/cpython_asyncio_suite.py [--modules events,tasks] [--out docs/]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

MODULES = (
    "events", "streams", "tasks", "futures", "locks", "queues", "sock_lowlevel",
    "sendfile", "server", "subprocess", "taskgroups", "timeouts", "runners", "ssl",
    "unix_events",
)
VARIANTS = ("asyncio", "aem-selector", "uvloop", "aem-uvloop")
REFERENCE = {"aem-selector": "asyncio", "aem-uvloop": "uvloop"}
# Per module and variant; test_events alone takes ~1 minute here.
_TIMEOUT = 900


def _patch(variant: str) -> None:
    import asyncio

    if variant == "asyncio":
        return
    if variant == "uvloop":
        import uvloop

        from aem_loop.api import _policy_base

        class policy_cls(_policy_base()):  # type: ignore[no-redef,misc]
            # uvloop's own policy has no child watchers on 3.11, which the
            # subprocess tests need; the Unix default policy has them.
            def new_event_loop(self):  # type: ignore[no-untyped-def]
                return uvloop.new_event_loop()

        def selector_loop(selector=None):  # type: ignore[no-untyped-def]
            if selector is not None:
                selector.close()
            return uvloop.new_event_loop()
    else:
        import aem_loop

        backend = variant.removeprefix("aem-")

        class policy_cls(aem_loop.EventLoopPolicy):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__(backend=backend)

        if backend == "selector":
            from aem_loop.backends.selector import SelectorLoop as selector_loop  # type: ignore
        else:
            def selector_loop(selector=None):  # type: ignore[no-untyped-def]
                if selector is not None:
                    selector.close()
                return aem_loop.new_event_loop(backend="uvloop")

    if variant.endswith("uvloop"):
        # The harness's close_loop reads BaseEventLoop._default_executor, which
        # uvloop loops do not expose; shut the executor down the public way.
        from test.test_asyncio import utils as tu

        harness_close = tu.TestCase.close_loop

        def close_loop(loop):  # type: ignore[no-untyped-def]
            if hasattr(loop, "_default_executor"):
                return harness_close(loop)
            if not loop.is_closed():
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            return None

        tu.TestCase.close_loop = staticmethod(close_loop)  # type: ignore[assignment]

    # The tests reset the policy to None, which re-creates DefaultEventLoopPolicy.
    asyncio.DefaultEventLoopPolicy = policy_cls  # type: ignore[misc,assignment]
    asyncio.set_event_loop_policy(policy_cls())
    asyncio.SelectorEventLoop = selector_loop  # type: ignore[misc,assignment]
    asyncio.unix_events.SelectorEventLoop = selector_loop  # type: ignore[attr-defined]
    if hasattr(asyncio, "EventLoop"):
        # 3.13+: the platform's default loop class, an alias of the selector
        # loop (test_runners: asyncio.run(loop_factory=asyncio.EventLoop))
        asyncio.EventLoop = selector_loop  # type: ignore[misc,assignment]
        asyncio.unix_events.EventLoop = selector_loop  # type: ignore[attr-defined]


# A test that runs longer than this is stopped with TimeoutError (stock
# test_events runs in ~12 s in all; uvloop hangs in test_bidirectional_pty),
# and again every _TEST_ALARM_AGAIN seconds while it does not end (a test
# whose clean-up spins, e.g. RunnerTests.test_interrupt_call_soon on the
# uvloop variants now and then, would otherwise hold the module until the
# harness gives up on it).
_TEST_ALARM = 60
_TEST_ALARM_AGAIN = 5


def _on_alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise TimeoutError(f"test ran longer than {_TEST_ALARM}s")


class _Collect(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, str] = {}

    def startTest(self, test):  # type: ignore[no-untyped-def]
        super().startTest(test)
        signal.setitimer(signal.ITIMER_REAL, _TEST_ALARM, _TEST_ALARM_AGAIN)

    def stopTest(self, test):  # type: ignore[no-untyped-def]
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)

    def addSuccess(self, test):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "pass"

    def addFailure(self, test, err):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "fail"
        self.failures.append((test, self._exc_info_to_string(err, test)))

    def addError(self, test, err):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "error"
        self.errors.append((test, self._exc_info_to_string(err, test)))

    def addSkip(self, test, reason):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "skip"

    def addExpectedFailure(self, test, err):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "pass"

    def addUnexpectedSuccess(self, test):  # type: ignore[no-untyped-def]
        self.status[test.id()] = "fail"


def _child(variant: str, module: str, out: str) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    # A shell starts a background job with SIGINT ignored; then
    # asyncio.Runner installs no SIGINT handler and _thread.interrupt_main()
    # does nothing, and test_runners' interrupt tests spin on every loop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _patch(variant)
    name = f"test.test_asyncio.test_{module}"
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    result = _Collect()
    suite.run(result)
    details = {t.id(): tb[-1500:] for t, tb in result.failures + result.errors}
    with open(out, "w") as f:
        json.dump({"status": result.status, "details": details}, f)


def _run(variant: str, module: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        path = tmp.name
    try:
        # in a directory of its own: the tests leave @test_* files in theirs
        with tempfile.TemporaryDirectory() as work:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", variant, module, path],
                capture_output=True, text=True, timeout=_TIMEOUT, cwd=work,
            )
        with open(path) as f:
            text = f.read()
        if not text:
            return {"status": {}, "details": {}, "crash": proc.stderr[-3000:]}
        return json.loads(text)  # type: ignore[no-any-return]
    except subprocess.TimeoutExpired:
        return {"status": {}, "details": {}, "crash": f"timeout after {_TIMEOUT}s"}
    finally:
        os.unlink(path)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None, help="directory for cpython-test_asyncio.{json,md}")
    a = ap.parse_args()
    modules = a.modules.split(",")
    variants = a.variants.split(",")
    results: dict[str, dict[str, dict]] = {}
    for m in modules:
        for v in variants:
            t0 = time.monotonic()
            results.setdefault(m, {})[v] = r = _run(v, m)
            counts = _counts(r)
            print(f"{m:14} {v:13} pass {counts['pass']:4} fail {counts['fail']:3} "
                  f"skip {counts['skip']:3} {time.monotonic() - t0:6.1f}s"
                  + (" CRASH" if r.get("crash") else ""), flush=True)
    md = _report(results, modules, variants)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "cpython-test_asyncio.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(a.out, "cpython-test_asyncio.md"), "w") as f:
            f.write(md)


def _counts(r: dict) -> dict[str, int]:
    c = {"pass": 0, "fail": 0, "skip": 0}
    for s in r["status"].values():
        c["fail" if s in ("fail", "error") else s] += 1
    return c


def _report(results: dict, modules: list[str], variants: list[str]) -> str:
    lines = [
        f"CPython {sys.version.split()[0]} test_asyncio, per module: passed / failed+errors / "
        "skipped; 'worse' counts tests that pass on the reference (stock asyncio for "
        "aem-selector, uvloop for aem-uvloop) but not on aem.", "",
        "| module | " + " | ".join(variants) + " | "
        + " | ".join(f"worse ({v})" for v in variants if v in REFERENCE) + " |",
        "|---" * (1 + len(variants) + sum(v in REFERENCE for v in variants)) + "|",
    ]
    worse_all: dict[str, list[tuple[str, str]]] = {}
    for m in modules:
        row = [m]
        for v in variants:
            c = _counts(results[m][v])
            row.append(f"{c['pass']}/{c['fail']}/{c['skip']}"
                       + (" crash" if results[m][v].get("crash") else ""))
        for v in variants:
            ref = REFERENCE.get(v)
            if ref is None or ref not in variants:
                continue
            rs, vs = results[m][ref]["status"], results[m][v]["status"]
            worse = sorted(t for t, s in rs.items() if s == "pass" and vs.get(t) != "pass")
            worse_all.setdefault(v, []).extend((t, vs.get(t, "missing")) for t in worse)
            row.append(str(len(worse)))
        lines.append("| " + " | ".join(row) + " |")
    for v, items in worse_all.items():
        lines += ["", f"Tests passing on {REFERENCE[v]} but not on {v} ({len(items)}):", ""]
        lines += [f"- `{t}`: {s}" for t, s in items]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
