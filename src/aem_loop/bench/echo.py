"""Echo server throughput: the loops under test serve, a separate process loads.

A run of a cell starts one server process per loop under test (asyncio
Protocol or streams; each on the same CPU) and one client process (uvloop,
on the other CPU) with N connections to every server.  The client loads one
server at a time in short bursts (each connection doing request/response
round trips of S bytes) and goes round the servers, cycle after cycle, in a
rotating order.  On a VM whose speed drifts by 2-3x within seconds, runs of
seconds each measured one after the other differ by +-25% between two runs
of the same loop; bursts of 0.1 s side by side see the same machine, so the
ratio of two loops in one cycle is what the figures are made of.

Each burst also reads its server's CPU time (the kernel's per-process CPU
clock, nanoseconds, read by the client before and after the burst): round
trips per second of server CPU tell the server's cost apart from the round
trip's latency (the kernel's loopback, the client), which round trips per
second of wall time also carry.

``run_cell`` (one loop, one server, one load) serves the vmtable benchmark.
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

# Seconds a server is loaded in one turn: long enough for thousands of round
# trips, short enough that the loops compared in one cycle see one machine.
BURST = 0.1

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


async def _use_a_priority() -> None:
    """What a program that uses priorities has done before it serves: run
    something at a non-default priority (this ends the uvloop backend's
    fast path for the process)."""
    import aem_loop

    with aem_loop.priority(aem_loop.Priority.HIGH):
        await asyncio.sleep(0)


async def _serve(kind: str, variant: str = "") -> None:
    if variant == "prio":
        await _use_a_priority()
    if variant == "high":
        import aem_loop

        with aem_loop.priority(aem_loop.Priority.HIGH):
            await _serve_on(kind)
    else:
        await _serve_on(kind)


async def _serve_on(kind: str) -> None:
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
    """Serve *kind* on *loop_name*, which may carry a variant and a flag:
    ``aem-uvloop/prio`` (a priority used before serving), ``aem-uvloop/high``
    (the server created under Priority.HIGH); ``,cold`` after either skips
    :func:`settle_malloc` (the allocator as the interpreter left it)."""
    pin(0)
    name, _, flags = loop_name.partition(",")
    if flags != "cold":
        settle_malloc()
    base, _, variant = name.partition("/")
    if variant not in ("", "prio", "high"):
        raise ValueError(f"unknown server variant {variant!r} in {loop_name!r}")
    with asyncio.Runner(loop_factory=loop_factory(base)) as r:
        r.run(_serve(kind, variant))


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


class _Burst:
    """One burst on one server's connections."""

    def __init__(self, msg: bytes, nconns: int, done: asyncio.Future[None]) -> None:
        self.msg, self.nconns, self.done = msg, nconns, done
        self.live = True
        self.count = 0
        self.idle = 0


class _BurstConn(asyncio.Protocol):
    """A connection that round-trips while its server's burst is live."""

    burst: _Burst

    def __init__(self, size: int, lost: asyncio.Future[None]) -> None:
        self.size, self.lost = size, lost
        self.got = 0

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < self.size:
            return
        if self.got != self.size:
            raise RuntimeError("echo returned more bytes than sent")
        self.got = 0
        b = self.burst
        b.count += 1
        if b.live:
            self.t.write(b.msg)
        else:
            b.idle += 1
            if b.idle == b.nconns:
                b.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _cpu_clock(pid: int) -> int:
    """The clock id of process *pid*'s CPU time, all its threads (Linux:
    CPUCLOCK_SCHED, as clock_getcpuclockid(3) makes it)."""
    return ((~pid) << 3) | 2


async def _bursts(ports: list[int], pids: list[int], conns: int, size: int, burst: float,
                  cycles: int) -> tuple[list[list[float]], list[list[float]]]:
    """Round trips/s of every burst, per server, in cycle order; and round
    trips per second of the server's CPU time in that burst."""
    loop = asyncio.get_running_loop()
    msg = os.urandom(size)
    groups: list[list[_BurstConn]] = []
    for port in ports:
        group = []
        for _ in range(conns):
            c = _BurstConn(size, loop.create_future())
            await loop.create_connection(lambda c=c: c, "127.0.0.1", port)  # type: ignore[misc]
            group.append(c)
        groups.append(group)
    rates: list[list[float]] = [[] for _ in ports]
    per_cpu: list[list[float]] = [[] for _ in ports]
    clocks = [_cpu_clock(pid) for pid in pids]
    n = len(ports)
    for cycle in range(cycles):
        for i in [(cycle + j) % n for j in range(n)]:  # each server in each position
            group = groups[i]
            b = _Burst(msg, len(group), loop.create_future())
            for c in group:
                c.burst = b
            c0 = time.clock_gettime(clocks[i])
            t0 = time.perf_counter()
            for c in group:
                c.t.write(msg)
            await asyncio.sleep(burst)
            b.live = False
            await b.done  # every connection's last round trip is back
            rates[i].append(b.count / (time.perf_counter() - t0))
            per_cpu[i].append(b.count / (time.clock_gettime(clocks[i]) - c0))
    for group in groups:
        for c in group:
            c.t.close()
    await asyncio.gather(*(c.lost for group in groups for c in group))
    return rates, per_cpu


def _bursts_main(ports: list[int], pids: list[int], conns: int, size: int, burst: float,
                 cycles: int) -> None:
    import uvloop

    pin(1)
    rates, per_cpu = uvloop.run(_bursts(ports, pids, conns, size, burst, cycles))
    print(json.dumps({"rps": rates, "per_cpu_s": per_cpu}), flush=True)


# -- driver ------------------------------------------------------------------------

def _start_server(loop_name: str, kind: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "aem_loop.bench.echo", "serve", loop_name, kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("READY"):
        _stop_server(server)
        raise RuntimeError(f"echo server on {loop_name} did not start: {line!r}")
    return server, int(line.split()[1])


def _stop_server(server: subprocess.Popen[str]) -> None:
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_interleaved(loops: list[str], kind: str, conns: int, size: int, burst: float,
                    cycles: int) -> dict[str, dict[str, list[float]]]:
    """One run of a cell: {loop: {"rps": round trips/s of each of its *cycles*
    bursts, "per_cpu_s": round trips per second of its server's CPU time}}."""
    servers: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for lp in loops:
            server, port = _start_server(lp, kind)
            servers.append(server)
            ports.append(port)
        out = subprocess.run(
            [sys.executable, "-m", "aem_loop.bench.echo", "bursts", json.dumps(ports),
             json.dumps([server.pid for server in servers]), str(conns), str(size), str(burst),
             str(cycles)],
            capture_output=True, text=True, check=True,
            timeout=cycles * len(loops) * (burst * 10 + 1) + 60,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for server in servers:
            _stop_server(server)
    return {lp: {"rps": rps, "per_cpu_s": cpu}
            for lp, rps, cpu in zip(loops, got["rps"], got["per_cpu_s"], strict=True)}


def run_cell(loop_name: str, kind: str, conns: int, size: int, duration: float) -> float:
    """Round trips per second for one cell (fresh server and client processes)."""
    server, port = _start_server(loop_name, kind)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "aem_loop.bench.echo", "load", str(port), str(conns),
             str(size), str(duration)],
            capture_output=True, text=True, check=True, timeout=duration * 10 + 30,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["rps"])
    finally:
        _stop_server(server)


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
    elif argv and argv[0] == "bursts":
        _bursts_main(json.loads(argv[1]), json.loads(argv[2]), int(argv[3]), int(argv[4]),
                     float(argv[5]), int(argv[6]))
    else:
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--runs", type=int, default=3)
        ap.add_argument("--duration", type=float, default=None,
                        help="seconds of bursts per loop in one run (default 5, quick 0.5)")
        ap.add_argument("--burst", type=float, default=BURST)
        ap.add_argument("--out", default=None, help="write the results as JSON here")
        ap.add_argument("--variants", default="plain,prio,high",
                        help="aem servers to compare, comma-separated: plain (nothing "
                             "prioritized), prio (a priority used in the process before "
                             "serving), high (the server created under Priority.HIGH)")
        ap.add_argument("--cold", action="store_true",
                        help="also a second table with servers that skip the allocator "
                             "warm-up (settle_malloc)")
        a = ap.parse_args(argv)
        from .report import run_echo

        loops = echo_loops(a.variants.split(","))
        run_echo(quick=a.quick, runs=a.runs, duration=a.duration, out=a.out, loops=loops,
                 burst=a.burst)
        if a.cold:
            run_echo(quick=a.quick, runs=a.runs, duration=a.duration, out=a.out,
                     loops=[lp + ",cold" for lp in loops], burst=a.burst)


def echo_loops(variants: list[str]) -> list[str]:
    """The server names for the reference loops and every aem *variant*."""
    loops = [lp for lp in LOOPS if not lp.startswith("aem-")]
    for v in variants:
        if v not in ("plain", "prio", "high"):
            raise SystemExit(f"unknown variant {v!r}: choose from plain, prio, high")
        loops += [lp if v == "plain" else f"{lp}/{v}" for lp in LOOPS if lp.startswith("aem-")]
    return loops


if __name__ == "__main__":
    main()
