"""gunicorn (aiohttp's worker) and uvicorn serving on aem, as a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

BACKENDS = ["selector", "uvloop"]
MODULE = {"selector": "aem_loop.backends.selector", "uvloop": "aem_loop.backends.uv"}

_AIOHTTP_APP = """\
import asyncio
from aiohttp import web

async def info(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{type(loop).__module__} {loop._aem.slice}")

app = web.Application()
app.router.add_get("/", info)
"""

_ASGI_APP = """\
import asyncio

async def app(scope, receive, send):
    assert scope["type"] == "http"
    loop = asyncio.get_running_loop()
    body = f"{type(loop).__module__} {loop._aem.slice}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def _get(path: Path) -> bytes:
    """GET / over the Unix socket; the whole response (the server closes)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _serve(cmd: list[str], cwd: Path, ready: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AEM_LOOP_OPTIONS": "time_slice=0.003"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the socket is bound once this line is logged
        seen.append(line)
        if ready in line:
            return proc
    proc.wait(timeout=30)
    raise AssertionError("server exited before listening:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str], rc: int, last: str) -> None:
    """SIGTERM: the server shuts down as it does on stock asyncio (exit
    status *rc*, *last* logged)."""
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    try:
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == rc, rest
        assert last in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gunicorn_aiohttp_worker(backend: str, tmp_path: Path) -> None:
    (tmp_path / "gapp.py").write_text(_AIOHTTP_APP)
    sock = tmp_path / "g.sock"
    worker = "AEMUVLoopWebWorker" if backend == "uvloop" else "AEMWebWorker"
    proc = _serve([sys.executable, "-m", "gunicorn", "gapp:app", "-w", "1",
                   "-k", f"aem_loop.gunicorn.{worker}", "-b", f"unix:{sock}"],
                  tmp_path, "Listening at")
    try:
        reply = _get(sock)  # waits in the backlog until the worker has booted
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(f"{MODULE[backend]} 0.003".encode())
    finally:
        _stop(proc, 0, "Shutting down: Master")


@pytest.mark.parametrize("backend", BACKENDS)
def test_uvicorn_loop_option(backend: str, tmp_path: Path) -> None:
    (tmp_path / "uapp.py").write_text(_ASGI_APP)
    sock = tmp_path / "u.sock"
    proc = _serve([sys.executable, "-m", "uvicorn", "uapp:app", "--uds", str(sock),
                   "--lifespan", "off", "--loop", f"aem_loop.uvicorn:{backend}"],
                  tmp_path, "Uvicorn running")
    try:
        reply = _get(sock)
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(f"{MODULE[backend]} 0.003".encode())
    finally:
        # uvicorn re-raises the signal once it has shut down (as on asyncio)
        _stop(proc, -signal.SIGTERM, "Finished server process")


def test_bad_env_options_name_the_variable() -> None:
    code = "import aem_loop.uvicorn as u; u.selector()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "AEM_LOOP_OPTIONS": "time_slice=fast"}, timeout=60)
    assert out.returncode == 1
    assert "AEM_LOOP_OPTIONS" in out.stderr and "time_slice" in out.stderr
