"""The README's usage snippets and commands run as written.

Each Python snippet is a complete program, run in a process of its own; a
server is asked a request and stopped with Ctrl-C (its port is the only
thing changed: a free one instead of 8080).  The examples table must list
every example, and each is run by tests/test_examples.py.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys
import urllib.request

import pytest

from conftest import ends_cleanly, free_port, running

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.M | re.S)


def snippet(first_line: str) -> str:
    found = [b for b in blocks("python") if b.startswith(first_line)]
    assert len(found) == 1, f"one README snippet starts with {first_line!r}"
    return found[0]


def run_snippet(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=ROOT).stdout


def test_every_python_snippet_is_one_this_file_runs():
    firsts = sorted(b.splitlines()[0] for b in blocks("python"))
    assert firsts == sorted(["import asyncio, aem_loop", "from aiohttp import web",
                             "import asyncio, socket, aem_loop",
                             "import asyncio, anyio, aem_loop"])


def test_asyncio_snippet_runs_high_before_low_on_every_way_to_start_a_loop():
    out = run_snippet(snippet("import asyncio, aem_loop\n"))
    one = ["runs before NORMAL work queued earlier", "handler at 75", "batch at 25"]
    assert out.splitlines() == one * 3  # aem_loop.run twice, asyncio.Runner once


def test_events_snippet_prints_what_it_says():
    out = run_snippet(snippet("import asyncio, socket, aem_loop"))
    assert out == "[b'one', b'two'] 1 False\n[] 1 True\n"


def test_anyio_snippet_runs_on_an_aem_loop():
    assert run_snippet(snippet("import asyncio, anyio, aem_loop")) == "anyio ran on SelectorLoop\n"


def _serve_until_ctrl_c(cmd: list[str], url: str, expect: bytes, cwd: pathlib.Path) -> str:
    with running(cmd, cwd=cwd) as proc:
        line = proc.stdout.readline()  # both print a line once they listen
        assert "127.0.0.1" in line, (line, proc.stderr.read() if proc.poll() else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.read() == expect
        return ends_cleanly(proc)


def test_aiohttp_snippet_serves_with_route_priorities_and_stops_on_ctrl_c():
    code = snippet("from aiohttp import web")
    port = free_port()
    assert "port=8080" in code
    code = code.replace("port=8080", f"port={port}")
    _serve_until_ctrl_c([sys.executable, "-u", "-c", code],
                        f"http://127.0.0.1:{port}/health", b"ok", ROOT)


def test_httpd_command_serves_a_directory(tmp_path):
    (line,) = [ln for b in blocks("console") for ln in b.splitlines()
               if ln.startswith("aem-loop httpd")]
    args = shlex.split(line.split("#")[0])
    assert args[:3] == ["aem-loop", "httpd", "public/"] and "--port" in args
    args[args.index("--port") + 1] = str(port := free_port())
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "status.txt").write_bytes(b"fine\n")
    out = _serve_until_ctrl_c([sys.executable, "-m", "aem_loop.cli", *args[1:]],
                              f"http://127.0.0.1:{port}/status.txt", b"fine\n", tmp_path)
    assert "stopped: 1 requests" in out


def test_server_commands_name_what_exists():
    """The gunicorn and uvicorn lines name real worker classes and loop
    setups (tests/test_servers.py starts both servers with them)."""
    import importlib

    (sh,) = blocks("sh")
    worker = re.search(r"-k (aem_loop\.gunicorn)\.(\w+)", sh)
    module, attr = worker.group(1), worker.group(2)
    assert hasattr(importlib.import_module(module), attr)
    assert hasattr(importlib.import_module(module), "AEMUVLoopWebWorker")
    loop = re.search(r"--loop (aem_loop\.uvicorn):(\w+)", sh)
    uv = importlib.import_module(loop.group(1))
    assert callable(getattr(uv, loop.group(2))) and callable(uv.uvloop)


def test_examples_table_lists_every_example_and_a_test_runs_each():
    listed = set(re.findall(r"^\| `python examples/(\w+\.py)", README, re.M))
    on_disk = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert listed == on_disk
    tests = (ROOT / "tests" / "test_examples.py").read_text()
    for name in sorted(listed):
        assert f'"{name}"' in tests, f"no test runs examples/{name}"


@pytest.mark.parametrize("cmd", [c for b in blocks("bash") for c in b.splitlines()])
def test_setup_commands_are_what_ci_runs(cmd):
    """The two set-up commands: CI (.ci/run) runs the same install and tests."""
    ci = (ROOT / ".ci" / "run").read_text()
    if cmd.startswith("python3 -m venv"):
        assert "python3 -m venv .venv" in ci and "-e '.[all]'" in ci
    else:
        assert cmd == "aem-loop bench --quick && pytest"
        assert "run_tests" in ci
