"""Echo server throughput: the loop under test serves, a separate process loads.

Each cell starts a fresh server process on the loop under test (asyncio
Protocol or streams), then a client process (stock asyncio + uvloop, the same
for every server) keeps N connections each doing request/response round trips
of S bytes for D seconds and reports round trips per second.  Cells are
interleaved across loops and repeated; the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from .common import LOOPS, loop_factory, pin, settle_malloc

# -- server (child process) ----------------------------------------------------

class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _streams_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0, backlog=512)
    elif kind == "vmtable":
        from ..vmprotocol import BlockProtocol
        from ..vmtable import VMTable

        class _BlockEcho(BlockProtocol):
            def block_received(self, block):  # type: ignore[no-untyped-def]
                self.write_block(block)

        # 64 MiB of 64 KiB reads: room for 1024 in flight (50 connections need ~100)
        table = VMTable(64 << 20, min_block=1024)
        server = await loop.create_server(
            lambda: _BlockEcho(table, chunk=65536), "127.0.0.1", 0, backlog=512
        )
    else:
        server = await asyncio.start_server(_streams_handler, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    # serve until stdin closes (the parent ends the cell)
    stop = loop.create_future()
    def on_stdin() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop
    server.close()


def _server_main(loop_name: str, kind: str) -> None:
    pin(0)
    settle_malloc()
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as r:
        r.run(_serve(kind))


# -- client (child process) ------------------------------------------------------

class _Client(asyncio.Protocol):
    def __init__(self, msg: bytes, deadline: float, done: asyncio.Future[None]) -> None:
        self.msg, self.deadline, self.done = msg, deadline, done
        self.got = 0
        self.count = 0

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.t = transport
        transport.write(self.msg)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(self.msg):
            if self.got != len(self.msg):
                raise RuntimeError("echo returned more bytes than sent")
            self.got = 0
            self.count += 1
            if time.monotonic() < self.deadline:
                self.t.write(self.msg)
            else:
                self.t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _load(port: int, conns: int, size: int, duration: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    msg = os.urandom(size)
    start = time.monotonic()
    deadline = start + duration
    clients = []
    for _ in range(conns):
        client = _Client(msg, deadline, loop.create_future())
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
        clients.append(client)
    await asyncio.gather(*(c.done for c in clients))
    return time.monotonic() - start, sum(c.count for c in clients)


def _client_main(port: int, conns: int, size: int, duration: float) -> None:
    import uvloop

    pin(1)
    elapsed, total = uvloop.run(_load(port, conns, size, duration))
    print(json.dumps({"rps": total / elapsed, "total": total}), flush=True)


# -- driver ------------------------------------------------------------------------

def run_cell(loop_name: str, kind: str, conns: int, size: int, duration: float) -> float:
    """Round trips per second for one cell (fresh server and client processes)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "aem_loop.bench.echo", "serve", loop_name, kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"echo server on {loop_name} did not start: {line!r}")
        port = int(line.split()[1])
        out = subprocess.run(
            [sys.executable, "-m", "aem_loop.bench.echo", "load", str(port), str(conns),
             str(size), str(duration)],
            capture_output=True, text=True, check=True, timeout=duration * 10 + 30,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["rps"])
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def cells(quick: bool) -> list[tuple[str, int, int]]:
    if quick:
        return [("protocol", 10, 1024), ("streams", 50, 10240)]
    return [(k, c, s) for k in ("protocol", "streams") for s in (1024, 10240) for c in (10, 50)]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        _server_main(argv[1], argv[2])
    elif argv and argv[0] == "load":
        _client_main(int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]))
    else:
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--runs", type=int, default=3)
        ap.add_argument("--duration", type=float, default=None)
        ap.add_argument("--out", default=None, help="write the results as JSON here")
        a = ap.parse_args(argv)
        from .report import run_echo

        run_echo(quick=a.quick, runs=a.runs, duration=a.duration, out=a.out, loops=LOOPS)


if __name__ == "__main__":
    main()
