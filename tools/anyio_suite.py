"""Run anyio's own test suite with aem loops next to stock asyncio and uvloop.

anyio's conftest parametrizes every async test over its backends ("asyncio",
"asyncio+uvloop", ...).  This downloads the source distribution of the anyio
installed here, adds two parameters, "asyncio+aem-selector" and
"asyncio+aem-uvloop" (anyio's asyncio backend with ``loop_factory`` set to
``aem_loop.new_event_loop``), runs the suite (trio's half deselected) and
prints, per variant, passed/failed/skipped, and every test that passes on the
reference (stock asyncio for aem-selector, uvloop for aem-uvloop) but not on
aem.  About 7 minutes here.

anyio's tests need its test dependencies (in a separate venv, since they want
pytest >= 9)::

    python -m venv /tmp/venv_anyio
    /tmp/venv_anyio/bin/pip install -e '.[all]' blockbuster hypothesis psutil \\
        'pytest>=9' pytest-mock pytest-timeout trustme truststore
    /tmp/venv_anyio/bin/python tools/anyio_suite.py [--workdir /tmp/anyio-suite]

Tests with an ``ipv6`` parameter fail on every variant on a machine without
IPv6 loopback; they cancel out in the comparison.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

VARIANTS = ("asyncio", "asyncio+uvloop", "asyncio+aem-selector", "asyncio+aem-uvloop")
PAIRS = (("asyncio", "asyncio+aem-selector"), ("asyncio+uvloop", "asyncio+aem-uvloop"))

PATCH = '''
import functools as _aem_ft
import aem_loop as _aem
for _b in ("selector", "uvloop"):
    asyncio_params.append(pytest.param(
        ("asyncio", {"debug": True,
                     "loop_factory": _aem_ft.partial(_aem.new_event_loop, backend=_b)}),
        id=f"asyncio+aem-{_b}"))

backend_params = asyncio_params.copy()'''


def fetch(workdir: Path) -> Path:
    version = importlib.metadata.version("anyio")
    src = workdir / f"anyio-{version}"
    if not src.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                        "--no-deps", "-d", str(workdir), f"anyio=={version}"], check=True)
        with tarfile.open(workdir / f"anyio-{version}.tar.gz") as tar:
            tar.extractall(workdir, filter="data")
    conftest = src / "tests" / "conftest.py"
    text = conftest.read_text()
    if "_aem.new_event_loop" not in text:
        anchor = "\nbackend_params = asyncio_params.copy()"
        if anchor not in text:
            sys.exit(f"{conftest}: anyio's conftest changed; cannot add the aem variants")
        conftest.write_text(text.replace(anchor, PATCH, 1))
    return src


def variant_of(name: str) -> tuple[str, str | None]:
    """(test id with the variant replaced by '#', variant) for a parametrized test."""
    m = re.match(r"(.*)\[(.*)\]$", name)
    if not m:
        return name, None
    base, params = m.groups()
    parts = params.split("-")
    for v in sorted(VARIANTS, key=len, reverse=True):
        vp = v.split("-")
        for i in range(len(parts) - len(vp) + 1):
            if parts[i:i + len(vp)] == vp:
                rest = [*parts[:i], "#", *parts[i + len(vp):]]
                return f"{base}[{'-'.join(rest)}]", v
    return name, None


def compare(xml: Path) -> int:
    outcome: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for tc in ET.parse(xml).getroot().iter("testcase"):
        state = "pass"
        for child in tc:
            if child.tag in ("failure", "error"):
                state = "fail"
            elif child.tag == "skipped" and state == "pass":
                state = "skip"
        base, v = variant_of(f"{tc.get('classname')}::{tc.get('name')}")
        if v:
            outcome[base][v] = state
    totals = collections.Counter((v, s) for d in outcome.values() for v, s in d.items())
    print(f"anyio {importlib.metadata.version('anyio')} test suite: passed / failed+errors / "
          "skipped per variant")
    for v in VARIANTS:
        print(f"  {v:22} {totals[(v, 'pass')]:5} / {totals[(v, 'fail')]:4} / "
              f"{totals[(v, 'skip')]:4}")
    worse_all = 0
    for ref, aem in PAIRS:
        worse = sorted(b for b, d in outcome.items()
                       if d.get(ref) == "pass" and d.get(aem) == "fail")
        better = sorted(b for b, d in outcome.items()
                        if d.get(ref) == "fail" and d.get(aem) == "pass")
        worse_all += len(worse)
        print(f"{aem}: {len(worse)} pass on {ref} but not here, {len(better)} the other way")
        for b in worse:
            print(f"  worse: {b}")
        for b in better:
            print(f"  better: {b}")
    return worse_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/anyio-suite")
    ap.add_argument("-k", default="not trio", help="pytest -k expression")
    a = ap.parse_args()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = fetch(workdir)
    xml = workdir / "results.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "--no-header", "-p",
                    "no:cacheprovider", f"--junitxml={xml}", "-k", a.k, "tests"], cwd=src)
    sys.exit(1 if compare(xml) else 0)


if __name__ == "__main__":
    main()
