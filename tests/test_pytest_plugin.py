"""The pytest plugin (installed with aem-loop) leaves other suites alone
unless asked, and puts their pytest-asyncio tests on aem loops when asked."""

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import asyncio

async def test_loop_kind():
    loop = asyncio.get_running_loop()
    print("LOOP", type(loop).__module__, type(loop).__name__)
"""


def _run(pytester: pytest.Pytester, *args: str, ini: str = "") -> pytest.RunResult:
    pytester.makeini(f"[pytest]\nasyncio_mode = auto\n{ini}")
    pytester.makepyfile(test_suite=SUITE)
    # a subprocess: plugins load from their entry points, as for a user
    return pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)


def test_other_suites_run_on_stock_asyncio_unless_asked(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOOP asyncio.unix_events _UnixSelectorEventLoop*"])


@pytest.mark.parametrize("backend,cls", [("selector", "SelectorLoop"), ("uvloop", "UVLoop")])
def test_asked_on_the_command_line(pytester: pytest.Pytester, backend: str, cls: str) -> None:
    result = _run(pytester, f"--aem-loop={backend}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*LOOP aem_loop.backends.* {cls}*"])


def test_asked_in_the_ini_file_for_both_backends(pytester: pytest.Pytester) -> None:
    result = _run(pytester, ini="aem_loop = all")
    result.assert_outcomes(passed=2)


def test_a_bad_choice_names_the_choices(pytester: pytest.Pytester) -> None:
    result = _run(pytester, ini="aem_loop = fast")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*aem_loop must be one of selector, uvloop, all*"])
