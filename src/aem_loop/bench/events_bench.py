"""Events: SocketData events against a plain Protocol, and activations per readiness.

    python benchmarks/events.py [--runs 3] [--duration 2] [--out benchmarks/results]

1. Throughput: a line echo server, 10 connections, each keeping 32 lines of
   64 bytes in flight (a client process pinned to the second CPU, server to
   the first).  Servers: a plain ``asyncio.Protocol`` that frames lines
   itself, on asyncio, uvloop and both aem backends; and the same server as
   a ``loop.add_event(SocketData(sock, Lines()), handler)`` on both aem
   backends.  Lines echoed per second, medians of interleaved runs.
2. Bursty input: bursts of 1, 10 or 100 lines written back to back by the
   client; the server's handler (an event at LOW priority) is held behind
   HIGH work for 1 ms after each activation.  Reported: reads by the job,
   handler activations, lines per activation -- what the reactive job
   merged -- next to the ``data_received`` calls a plain Protocol gets.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from aem_loop.bench.common import ask_to_stop, child, machine, save_results

LINE = b"x" * 63 + b"\n"
CONNECTIONS = 10
WINDOW = 32
SERVERS = ("asyncio-protocol", "uvloop-protocol", "aem-selector-protocol",
           "aem-selector-event", "aem-uvloop-protocol", "aem-uvloop-event")


# -- servers (child processes) ----------------------------------------------------------

def serve(kind: str) -> None:
    import asyncio

    import aem_loop
    from aem_loop import framers

    os.sched_setaffinity(0, {0})

    class LineEcho(asyncio.Protocol):
        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t = t
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            end = buf.rfind(b"\n") + 1
            lines = buf[:end].split(b"\n")[:-1]
            self.buf = buf[end:]
            self.t.write(b"".join(line + b"\n" for line in lines))  # type: ignore[attr-defined]

    async def main(argv: list[str] | None = None) -> None:
        loop: Any = asyncio.get_running_loop()
        if kind.endswith("-protocol"):
            server = await loop.create_server(LineEcho, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
        else:
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(64)
            ls.setblocking(False)
            port = ls.getsockname()[1]
            socks = []

            async def accept() -> None:
                while True:
                    s, _ = await loop.sock_accept(ls)
                    s.setblocking(False)
                    socks.append(s)

                    def echo(act: aem_loop.Activation, s: socket.socket = s) -> None:
                        if act.data:
                            s.sendall(b"".join(line + b"\n" for line in act.data))

                    loop.add_event(aem_loop.SocketData(s, framers.Lines()), echo)

            acceptor = loop.create_task(accept())
        print(port, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        if not kind.endswith("-protocol"):
            acceptor.cancel()

    if kind.startswith("asyncio"):
        asyncio.run(main())
    elif kind.startswith("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        aem_loop.run(main(), backend=kind.split("-")[1])


def client(port: int, duration: float) -> None:
    import uvloop

    os.sched_setaffinity(0, {1})

    async def conn(count: list[int], end: float) -> None:
        import asyncio

        r, w = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            w.write(LINE * WINDOW)
            await r.readexactly(len(LINE) * WINDOW)
            count[0] += WINDOW
        w.close()

    async def main(argv: list[str] | None = None) -> None:
        import asyncio

        count = [0]
        end = time.perf_counter() + duration
        t0 = time.perf_counter()
        await asyncio.gather(*(conn(count, end) for _ in range(CONNECTIONS)))
        print(count[0] / (time.perf_counter() - t0))

    uvloop.run(main())


def throughput(kind: str, duration: float) -> float:
    me = "-m", "aem_loop.bench.events_bench"  # the roles run as modules of the package
    with child([sys.executable, *me, "--serve", kind], stdin=subprocess.PIPE,
               stdout=subprocess.PIPE) as srv:
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        out = subprocess.run([sys.executable, *me, "--client", str(port), str(duration)],
                             capture_output=True, text=True, check=True).stdout
        ask_to_stop(srv, "\n")
    return float(out)


# -- bursts (in process: the sender is a thread with a blocking socket) -------------------

def bursts(backend: str, burst: int, count: int = 200) -> dict[str, float]:
    import asyncio
    import threading

    import aem_loop
    from aem_loop import Priority, framers

    async def main() -> dict[str, float]:
        loop: Any = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        lines = 0
        done = loop.create_future()
        total = burst * count

        def handler(act: aem_loop.Activation) -> None:
            nonlocal lines
            lines += len(act.data)
            # the handler falls behind: urgent work holds the loop for 1 ms
            with aem_loop.priority(Priority.HIGH):
                loop.call_soon(time.sleep, 0.001)
            if lines >= total and not done.done():
                done.set_result(None)

        ev = loop.add_event(aem_loop.SocketData(a, framers.Lines()), handler,
                            priority=Priority.LOW)

        def send() -> None:
            for _ in range(count):
                b.sendall(LINE * burst)
                time.sleep(0.0002)

        t = threading.Thread(target=send)
        t.start()
        await done
        await asyncio.to_thread(t.join)
        st = ev.statistics()
        ev.unregister()
        a.close()
        b.close()
        return {"bursts": count, "reads": st.occurrences, "activations": st.activations,
                "lines_per_activation": total / st.activations}

    return aem_loop.run(main(), backend=backend)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve)
        return
    if a.client:
        client(int(a.client[0]), float(a.client[1]))
        return
    tp: dict[str, list[float]] = {k: [] for k in SERVERS}
    for run in range(a.runs):
        for kind in SERVERS:
            v = throughput(kind, a.duration)
            tp[kind].append(v)
            print(f"run {run + 1}/{a.runs} {kind:22} {v:10.0f} lines/s", flush=True)
    med = {k: statistics.median(v) for k, v in tp.items()}
    ref = {"asyncio-protocol": None, "uvloop-protocol": None,
           "aem-selector-protocol": "asyncio-protocol", "aem-selector-event": "asyncio-protocol",
           "aem-uvloop-protocol": "uvloop-protocol", "aem-uvloop-event": "uvloop-protocol"}
    lines = [
        "# Events: SocketData against a plain Protocol",
        "",
        f"Machine: {machine()}. Line echo, {CONNECTIONS} connections x {WINDOW} lines of "
        f"{len(LINE)} bytes in flight, client on CPU 1, server on CPU 0, {a.duration:g} s per "
        f"cell, medians of {a.runs} interleaved runs.",
        f"Command: `python benchmarks/events.py --runs {a.runs} --duration {a.duration:g}`",
        "",
        "| server | lines/s | vs stock |",
        "|---|---|---|",
    ]
    for k in SERVERS:
        r = ref[k]
        lines.append(f"| {k} | {med[k]:.0f} | {med[k] / med[r]:.3f}x |" if r else
                     f"| {k} | {med[k]:.0f} | |")
    lines += ["", "Bursty input (200 bursts, handler at LOW held 1 ms behind HIGH work after "
              "each activation):", "",
              "| backend | lines per burst | job reads | handler activations | lines per "
              "activation |", "|---|---|---|---|---|"]
    burst_res: dict[str, dict[str, float]] = {}
    for backend in ("selector", "uvloop"):
        for burst in (1, 10, 100):
            got = bursts(backend, burst)
            burst_res[f"{backend}-{burst}"] = got
            lines.append(f"| {backend} | {burst} | {got['reads']} | {got['activations']} | "
                         f"{got['lines_per_activation']:.1f} |")
    save_results(a.out, "events", "\n".join(lines) + "\n",
                 {"throughput": tp, "bursts": burst_res})


if __name__ == "__main__":
    main()
