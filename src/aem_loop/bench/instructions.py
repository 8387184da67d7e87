"""User-space instructions per echo round trip, counted by valgrind's callgrind.

Throughput on a shared VM drifts by 2-3x over minutes; instruction counts do
not.  The server (one loop per run) runs under callgrind; a plain blocking
client keeps 10 connections doing 1 KiB (``--size``) round trips, ROUNDS_LO then
ROUNDS_HI times; the difference divided by the extra round trips removes
start-up.  Needs valgrind (Debian package) and takes ~1 minute.

    python benchmarks/instructions.py [--loops asyncio,aem-selector] [--api streams] [--size 10240]

A loop name may carry a server variant as in benchmarks/echo.py:
``aem-uvloop/prio`` (a priority used before serving), ``aem-uvloop/high``
(the server created under Priority.HIGH).

``--api aiohttp``: aiohttp's hello world instead of an echo server, one
keep-alive GET per round trip; variants as in ``aiohttp_routes.py --app
hello``: ``/prio``, ``/site`` (a second site listening under
Priority.HIGH; the requests go to the first) and ``/routes``
(``route_priorities`` with /health at HIGH; the requests go to /).

Note: valgrind emulates clock_gettime (~900 instructions a read, where a
real one costs ~70 ns), and the server runs ~50x slower under it, so an
aem loop spends far more time slices per request there than in real time
(each a clock read and, with I/O registered above the backlog, an ask of
the urgent epoll set).  ``--time-slice 1`` (seconds, the aem servers' slice)
counts the dispatch without any slice spent.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from aem_loop.bench.common import free_port, machine

ROUNDS_LO, ROUNDS_HI = 100, 400
CONNS = 10

# The servers' main() begins alike: the future that ends it, the variant "prio".
_MAIN_HEAD = """async def main():
    global fut
    import aem_loop
    loop = asyncio.get_running_loop(); fut = loop.create_future()
    if variant == "prio":  # a priority used in the process before serving
        with aem_loop.priority(aem_loop.Priority.HIGH):
            await asyncio.sleep(0)"""

# ... and end alike: argv[1] the loop (with its variant), argv[5] the aem
# loops' time slice ("-": the loop's own).
_MAIN_TAIL = r"""name, _, variant = sys.argv[1].partition("/")
opts = {"time_slice": float(sys.argv[5])} if sys.argv[5] != "-" else {}
with asyncio.Runner(loop_factory=loop_factory(name, **opts)) as r: r.run(main())
"""

SERVER = r"""
import asyncio, sys
from aem_loop.bench.common import loop_factory, settle_malloc
settle_malloc()
n_conn = int(sys.argv[3]) + 1  # the clients and the readiness probe
done = [0]
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
    def connection_lost(self, exc):
        done[0] += 1
        if done[0] == n_conn: fut.set_result(None)
async def handle(r, w):
    try:
        while d := await r.read(65536):
            w.write(d)
    finally:
        w.close()
        done[0] += 1
        if done[0] == n_conn: fut.set_result(None)
""" + _MAIN_HEAD + r"""
    if variant == "high":  # the server created under Priority.HIGH
        with aem_loop.priority(aem_loop.Priority.HIGH):
            await serve(loop)
    else:
        await serve(loop)
    await fut
async def serve(loop):
    global srv
    if sys.argv[4] == "streams":
        srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[2]))
    else:
        srv = await loop.create_server(Echo, "127.0.0.1", int(sys.argv[2]))
""" + _MAIN_TAIL


AIOHTTP_SERVER = r"""
import asyncio, sys
from aiohttp import web
from aem_loop.bench.common import loop_factory, settle_malloc
settle_malloc()
async def hello(request):
    return web.Response(text="Hello, World!")
async def stop(request):
    fut.set_result(None)
    return web.Response(text="bye")
""" + _MAIN_HEAD + r"""
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/stop", stop)
    if variant == "routes":  # one port, /health at HIGH (the requests go to /)
        import aem_loop.aiohttp
        aem_loop.aiohttp.route_priorities(app, {"/health": aem_loop.Priority.HIGH})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[2])).start()
    if variant == "site":  # a second site listening under Priority.HIGH
        with aem_loop.priority(aem_loop.Priority.HIGH):
            await web.TCPSite(runner, "127.0.0.1", 0).start()
    await fut
    await runner.cleanup()
""" + _MAIN_TAIL

_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _http_response(s: socket.socket, buf: bytearray) -> None:
    """Read one response with a Content-Length body off *s* (what is read
    past it stays in *buf*)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            m = re.search(rb"(?i)content-length:\s*(\d+)", bytes(buf[:end]))
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) >= total:
                del buf[:total]
                return
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 120
    while True:  # wait for the server (slow to start under valgrind)
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _http_client(port: int, rounds: int) -> None:
    _wait_for(port)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNS)]
    bufs = [bytearray() for _ in socks]
    for _ in range(rounds):
        for s in socks:
            s.sendall(_GET)
        for s, buf in zip(socks, bufs, strict=True):
            _http_response(s, buf)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stop HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        _http_response(s, bytearray())
    for s in socks:
        s.close()


def _client(port: int, rounds: int, size: int = 1024) -> None:
    _wait_for(port)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNS)]
    msg = b"x" * size
    for _ in range(rounds):
        for s in socks:
            s.sendall(msg)
        for s in socks:
            got = 0
            while got < len(msg):
                got += len(s.recv(65536))
    for s in socks:
        s.close()


def instructions(loop: str, rounds: int, api: str, time_slice: float | None = None,
                 size: int = 1024) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        script = f"{d}/server.py"
        with open(script, "w") as f:
            f.write(AIOHTTP_SERVER if api == "aiohttp" else SERVER)
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/out",
             sys.executable, script, loop, str(port), str(CONNS), api,
             "-" if time_slice is None or not loop.startswith("aem-") else repr(time_slice)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if api == "aiohttp":
            _http_client(port, rounds)
        else:
            _client(port, rounds, size)
        _, err = proc.communicate(timeout=300)
    m = re.search(r"Collected : (\d+)", err)
    if proc.returncode or not m:
        raise RuntimeError(f"callgrind run failed for {loop}: {err[-2000:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", default="asyncio,aem-selector")
    ap.add_argument("--api", choices=("protocol", "streams", "aiohttp"), default="protocol")
    ap.add_argument("--time-slice", type=float, default=None,
                    help="the aem servers' time slice in seconds (default: the loop's)")
    ap.add_argument("--size", type=int, default=1024,
                    help="bytes per echo message (protocol and streams; default 1024)")
    a = ap.parse_args(argv)
    if a.size <= 0:
        sys.exit(f"--size must be a positive number of bytes, got {a.size}")
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    extra = (ROUNDS_HI - ROUNDS_LO) * CONNS
    base = None
    what = ("aiohttp hello world request" if a.api == "aiohttp"
            else f"{a.size / 1024:g} KiB {a.api} echo round trip")
    sliced = "" if a.time_slice is None else f", aem time slice {a.time_slice:g} s"
    print(f"instructions per {what}, {CONNS} connections{sliced}; {machine()}")
    for loop in a.loops.split(","):
        per = (instructions(loop, ROUNDS_HI, a.api, a.time_slice, a.size)
               - instructions(loop, ROUNDS_LO, a.api, a.time_slice, a.size)) / extra
        base = base or per
        print(f"{loop:14} {per:9,.0f} instr/rt  {per / base:5.2f}x of {a.loops.split(',')[0]}")


if __name__ == "__main__":
    main()
