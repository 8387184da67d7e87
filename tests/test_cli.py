"""The aem-loop command as a user meets it."""

import subprocess
import sys

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
