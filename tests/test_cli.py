"""The aem-loop command as a user meets it."""

import os
import subprocess
import sys

import pytest

import aem_loop


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aem_loop.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    out = _cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"aem-loop {aem_loop.__version__}"


def test_bench_without_the_bench_extra_says_what_to_install() -> None:
    # rich made unimportable, as after `pip install aem-loop` without extras
    code = ("import sys; sys.modules['rich'] = None; "
            "from aem_loop.cli import main; sys.exit(main(['bench', '--quick']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "pip install 'aem-loop[bench]'" in out.stderr
    assert "rich" in out.stderr


_PROGRAM = """\
import asyncio, sys

async def main():
    loop = asyncio.get_running_loop()
    print(type(loop).__module__, sys.argv[1:], __name__)
    return 3

sys.exit(asyncio.run(main()))
"""


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_run_script_runs_an_unmodified_asyncio_program_on_aem(backend: str, tmp_path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(_PROGRAM)
    out = _cli("run", "--backend", backend, str(script), "a", "--flag")
    assert out.returncode == 3, out.stderr  # the program's own exit status
    module = "aem_loop.backends.uv" if backend == "uvloop" else "aem_loop.backends.selector"
    assert out.stdout.split("\n")[0] == f"{module} ['a', '--flag'] __main__"


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_run_module_with_options(backend: str, tmp_path) -> None:
    (tmp_path / "progmod.py").write_text(_PROGRAM)
    out = subprocess.run(
        [sys.executable, "-m", "aem_loop.cli", "run", "--backend", backend,
         "-o", "time_slice=0.001", "-o", "aging=none", "-m", "progmod", "x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 3, out.stderr
    assert out.stdout.split()[1:] == ["['x']", "__main__"]


def test_run_rejects_bad_options_by_name(tmp_path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(_PROGRAM)
    out = _cli("run", "-o", "time_slise=0.001", str(script))
    assert out.returncode == 2
    assert "time_slise" in out.stderr
    out = _cli("run", "-o", "time_slice", str(script))
    assert out.returncode == 2
    assert "NAME=VALUE" in out.stderr
    out = _cli("run")
    assert out.returncode == 2
    assert "SCRIPT or -m MODULE" in out.stderr


def test_plot_draws_saved_latency_results(tmp_path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    point = {"p50": 0.1, "p99": 0.2, "p99.9": 0.3, "max": 0.4, "gc_max": 0.0}
    (res / "latency.json").write_text(__import__("json").dumps({
        "machine": "test", "lateness_ms": {
            loop: {n: point for n in ("10", "100", "1000")}
            for loop in ("asyncio", "uvloop", "aem-selector", "aem-uvloop")}}))
    out = subprocess.run([sys.executable, "-m", "aem_loop.bench.plot", str(res),
                          str(tmp_path / "png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    png = tmp_path / "png" / "latency.png"
    assert out.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing to plot: said, not a silent success
    out = subprocess.run([sys.executable, "-m", "aem_loop.bench.plot", str(tmp_path / "png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "no results to plot" in out.stderr


def test_bench_plot_needs_out() -> None:
    out = _cli("bench", "--plot", "somewhere")
    assert out.returncode == 2
    assert "--out" in out.stderr


def test_plot_draws_the_repositorys_results_echo_latency_figure6(tmp_path) -> None:
    """The JSON the benchmarks wrote (benchmarks/results) draws every plot."""
    import pathlib

    res = pathlib.Path(__file__).parent.parent / "benchmarks" / "results"
    out = subprocess.run([sys.executable, "-m", "aem_loop.bench.plot", str(res), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("latency", "echo", "figure6"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("name", ["echo", "latency", "timers", "capsules", "vmtable", "rounds",
                                  "events", "aiohttp_routes", "figure6", "instructions"])
def test_every_benchmark_script_starts(name) -> None:
    """benchmarks/NAME.py runs the package's benchmark (aem-loop bench --only runs the same)."""
    import pathlib

    script = pathlib.Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    only = "aiohttp" if name == "aiohttp_routes" else name
    assert only in _cli("bench", "--help").stdout


def test_aem_loop_run_runs_an_example_as_written() -> None:
    """`aem-loop run examples/priority_demo.py` (the README's example of `run`)."""
    import pathlib

    demo = pathlib.Path(__file__).parent.parent / "examples" / "priority_demo.py"
    out = _cli("run", str(demo))
    assert out.returncode == 0, out.stderr
    assert "heartbeat lateness" in out.stdout
