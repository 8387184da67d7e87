"""The AEM paper's Figure 6: response time as idle connections grow.

    python benchmarks/figure6.py [--runs 3] [--duration 3] [--out benchmarks/results]

100 active keep-alive connections (wrk -t1 -c100 --latency, pinned to CPU 1)
ask for a small file while 0, 1k, 2k, 5k and 10k idle keep-alive
connections (each has made one request, then stays open; held by a process
of its own) are open on the same server (pinned to CPU 0).  Servers:

- ``aemhttpd-selector`` / ``aemhttpd-uvloop``: AEMhttpd (``aem_loop.httpd``),
  every connection an event: only sockets with data run a handler;
- ``aiohttp-*``: one aiohttp app (the file's bytes kept in memory, as
  AEMhttpd keeps small files) on aem (both backends), stock asyncio, uvloop;
- ``poll``: the paper's baseline, a single-threaded server written here on
  ``poll()``: the kernel checks every registered descriptor on every call,
  as it does for ``select()`` (select() itself cannot watch descriptors
  above 1023, so 10k connections need poll).

Each server runs ``--runs`` times (fresh process, servers in rotating
order); the figures are medians.  Writes figure6.md/.json/.png to --out.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile

from aem_loop.bench.common import free_port, machine, pin, save_results

SERVERS = ["aemhttpd-selector", "aemhttpd-uvloop", "aiohttp-aem-selector",
           "aiohttp-aem-uvloop", "aiohttp-asyncio", "aiohttp-uvloop", "poll"]
IDLE = [0, 1000, 2000, 5000, 10000]
FILE = "small.html"
BODY = b"<html><body>" + b"AEM " * 250 + b"</body></html>\n"  # ~1 KiB
ACTIVE = 100


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the servers (each in its own process) -----------------------------------------------


def serve(kind: str, port: int, root: str) -> None:
    pin(0)
    _raise_nofile()
    if kind == "poll":
        poll_server(port)
    elif kind.startswith("aemhttpd-"):
        import aem_loop
        from aem_loop.httpd import HTTPServer

        async def run() -> None:
            server = HTTPServer(root, port=port, timeout=3600, header_timeout=3600,
                                backlog=4096)
            await server.start()
            print("ready", flush=True)
            await server.serve_forever()

        aem_loop.run(run(), backend=kind.split("-", 1)[1])
    elif kind.startswith("aiohttp-"):
        import asyncio

        from aiohttp import web

        from aem_loop.bench.common import loop_factory

        async def small(request: web.Request) -> web.Response:
            return web.Response(body=BODY, content_type="text/html")

        async def run() -> None:
            app = web.Application()
            app.router.add_get(f"/{FILE}", small)
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=3600)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
            print("ready", flush=True)
            await asyncio.Event().wait()

        loop = loop_factory(kind.split("-", 1)[1])()
        loop.run_until_complete(run())
    else:
        raise SystemExit(f"unknown server {kind!r}; known: {', '.join(SERVERS)}")


def poll_server(port: int) -> None:
    """The baseline: one poll() over every connection per iteration."""
    lsock = socket.create_server(("127.0.0.1", port), backlog=4096)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    poller = select.poll()
    poller.register(lfd, select.POLLIN)
    response = (b"HTTP/1.1 200 OK\r\nServer: poll\r\nContent-Type: text/html\r\n"
                b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
    conns: dict[int, list] = {}  # fd -> [socket, input, output]
    print("ready", flush=True)
    while True:
        for fd, mask in poller.poll():
            if fd == lfd:
                while True:
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[c.fileno()] = [c, bytearray(), bytearray()]
                    poller.register(c.fileno(), select.POLLIN)
                continue
            conn = conns[fd]
            sock, inbuf, outbuf = conn
            if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    poller.unregister(fd)
                    del conns[fd]
                    sock.close()
                    continue
                if data:
                    inbuf += data
                    while (end := inbuf.find(b"\r\n\r\n")) >= 0:
                        del inbuf[:end + 4]
                        outbuf += response
            if outbuf:
                try:
                    n = sock.send(outbuf)
                except BlockingIOError:
                    n = 0
                del outbuf[:n]
                poller.modify(fd, select.POLLIN | (select.POLLOUT if outbuf else 0))


# -- the idle connections (a process of their own) ---------------------------------------


def hold(port: int) -> None:
    """Read a count per line from stdin; open (and use once) connections up
    to that count, answer "held N"; "quit" closes them."""
    _raise_nofile()
    request = f"GET /{FILE} HTTP/1.1\r\nHost: idle\r\n\r\n".encode()
    held: list[socket.socket] = []
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        want = int(line)
        while len(held) < want:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(65536)
            head, _, body = got.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m is None:
                raise RuntimeError(f"an idle connection got no Content-Length: {head!r}")
            n = int(m.group(1))
            while len(body) < n:
                body += s.recv(65536)
            held.append(s)
        print(f"held {len(held)}", flush=True)
    for s in held:
        s.close()


# -- measuring -----------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(port: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{ACTIVE}", f"-d{duration:g}s", "--latency",
         f"http://127.0.0.1:{port}/{FILE}"],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or "50" not in pct:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {"p50": _ms(pct["50"]), "p99": _ms(pct["99"]), "rps": float(rps.group(1)),
            "errors": (0 if errors is None else sum(int(x) for x in
                                                   re.findall(r"\d+", errors.group(1))))
            + (0 if non2xx is None else int(non2xx.group(1)))}


def measure(kind: str, root: str, idle: list[int], duration: float) -> dict[int, dict]:
    port = free_port()
    me = [sys.executable, "-m", "aem_loop.bench.figure6"]
    server = subprocess.Popen([*me, "--serve", kind, "--port", str(port), "--root", root],
                              stdout=subprocess.PIPE, text=True)
    holder = None
    assert server.stdout is not None
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} did not start")
        holder = subprocess.Popen([*me, "--hold", "--port", str(port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdin is not None and holder.stdout is not None
        wrk(port, 1)  # warm-up
        got = {}
        for n in idle:
            holder.stdin.write(f"{n}\n")
            holder.stdin.flush()
            line = holder.stdout.readline().strip()
            if line != f"held {n}":
                raise RuntimeError(f"{kind}: the idle holder said {line!r}")
            got[n] = wrk(port, duration)
            print(f"  {kind:22} idle {n:6}: p50 {got[n]['p50']:7.2f} ms  p99 "
                  f"{got[n]['p99']:7.2f} ms  {got[n]['rps']:8.0f} req/s"
                  + (f"  ({got[n]['errors']:.0f} errors)" if got[n]["errors"] else ""),
                  flush=True)
        return got
    finally:
        if holder is not None and holder.stdin is not None:
            holder.stdin.write("quit\n")
            holder.stdin.close()
            holder.wait(60)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per point")
    ap.add_argument("--idle", default=",".join(map(str, IDLE)),
                    help="idle connection counts, comma-separated")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--out", default=None, help="directory for figure6.md/.json/.png")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve, a.port, a.root)
        return
    if a.hold:
        hold(a.port)
        return
    idle = [int(x) for x in a.idle.split(",")]
    servers = a.servers.split(",")
    unknown = set(servers) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}")
    need = max(idle) + ACTIVE + 100
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < need:
        ap.error(f"{max(idle)} idle connections need RLIMIT_NOFILE >= {need} (ulimit -Hn)")
    print(f"Machine: {machine()}")
    raw: dict[str, list[dict[int, dict]]] = {k: [] for k in servers}
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, FILE), "wb") as f:
            f.write(BODY)
        for run in range(a.runs):
            order = servers[run % len(servers):] + servers[:run % len(servers)]
            for kind in order:
                raw[kind].append(measure(kind, root, idle, a.duration))
    med = {k: {n: {key: statistics.median(r[n][key] for r in runs)
                   for key in ("p50", "p99", "rps", "errors")} for n in idle}
           for k, runs in raw.items()}
    lines = [
        f"Machine: {machine()}. Server on CPU 0; wrk -t1 -c{ACTIVE} --latency on CPU 1 "
        f"({a.duration:g} s per point) asks for a {len(BODY)}-byte file; the idle "
        f"connections are keep-alive connections that made one request. Medians of "
        f"{a.runs} runs (`python benchmarks/figure6.py --runs {a.runs} --duration "
        f"{a.duration:g}`).",
        "",
        "| server | " + " | ".join(f"{n} idle p50 / p99 ms" for n in idle)
        + f" | p50 at {idle[-1]} / at {idle[0]} | req/s at {idle[0]} | req/s at {idle[-1]} |",
        "|---|" + "---|" * (len(idle) + 3),
    ]
    for kind in servers:
        m = med[kind]
        cells = " | ".join(f"{m[n]['p50']:.2f} / {m[n]['p99']:.2f}" for n in idle)
        lines.append(f"| {kind} | {cells} | {m[idle[-1]]['p50'] / m[idle[0]]['p50']:.2f}x | "
                     f"{m[idle[0]]['rps']:.0f} | {m[idle[-1]]['rps']:.0f} |")
    errors = {k: sum(m[n]["errors"] for n in idle) for k, m in med.items()}
    if any(errors.values()):
        lines += ["", f"wrk reported errors (median per point, summed): {errors}"]
    data = {"runs": a.runs, "duration": a.duration, "active": ACTIVE, "idle": idle,
            "median": {k: {str(n): v for n, v in m.items()} for k, m in med.items()},
            "raw": {k: [{str(n): v for n, v in r.items()} for r in rs] for k, rs in raw.items()}}
    save_results(a.out, "figure6", "\n".join(lines) + "\n", data)
    if a.out:
        from aem_loop.bench.plot import plot_figure6

        print("plot:", plot_figure6({**data, "machine": machine()},
                                    os.path.join(a.out, "figure6.png")))


if __name__ == "__main__":
    main()
