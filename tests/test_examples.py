"""The examples run (each in its own process, as a user would run them)."""

import contextlib
import pathlib
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import ends_cleanly, running

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    """The example's standard output; it must exit 0 within a minute."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_priority_demo_runs(backend):
    out = run_example("priority_demo.py", backend)
    assert f"backend {backend}: heartbeat lateness" in out


def test_vmtable_handoff_example_runs():
    out = run_example("vmtable_handoff.py")
    assert "read 1048576 bytes in place" in out


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_capsule_workers_example_runs(backend):
    out = run_example("capsule_workers.py", backend)
    assert "8 checksums from capsules" in out
    assert "accumulated 6" in out
    assert "exited with status 7" in out
    assert "no process left" in out


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_events_demo_runs(backend):
    out = run_example("events_demo.py", backend)
    assert out.count("2000 lines complete and in order: True") == 2
    assert "4000 values from 4 threads, none lost: True" in out


def started(name: str, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """The example running in its own process (killed if the test fails)."""
    return running([sys.executable, str(EXAMPLES / name), *args])


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_aiohttp_app_serves_health_at_high_and_stops_on_ctrl_c(backend):
    with started("aiohttp_app.py", backend, "0") as proc:
        line = proc.stdout.readline()  # printed once both sites listen
        m = re.search(r"health on (http://127\.0\.0\.1:\d+/health)", line)
        assert m, line
        with urllib.request.urlopen(m.group(1), timeout=30) as r:
            assert r.read() == b"ok at priority 75\n"
        assert ends_cleanly(proc).strip() == "stopped"


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_aemhttpd_example_serves_urgent_paths_at_high_and_stops_on_ctrl_c(backend):
    with started("aemhttpd.py", "--port", "0", "--backend", backend) as proc:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        with urllib.request.urlopen(m.group(1) + "aemhttpd.py", timeout=30) as r:
            assert r.read() == (EXAMPLES / "aemhttpd.py").read_bytes()
        assert "GET /aemhttpd.py -> 200" in proc.stdout.readline()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(m.group(1) + "urgent/nothing", timeout=30)
        assert e.value.code == 404
        e.value.close()
        assert proc.stdout.readline().strip().endswith("-> 404 (14 bytes) at priority 75")
        assert "AEMhttpd stopped: 2 requests" in ends_cleanly(proc)
