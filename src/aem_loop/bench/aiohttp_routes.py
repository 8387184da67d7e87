"""An aiohttp app under a /bulk flood: how fast is /health answered, and at what cost?

    python benchmarks/aiohttp_routes.py [--runs 3] [--duration 3] [--out benchmarks/results]
    python benchmarks/aiohttp_routes.py --connect [--runs 3] [--out benchmarks/results]
    python benchmarks/aiohttp_routes.py --app hello [--close] [--runs 3] [--out benchmarks/results]

One aiohttp app, one port: /bulk does 8 slices of 0.5 ms CPU with a yield
in between; wrk (pinned to the second CPU) floods it with 64 keep-alive
connections; a probe process (plain blocking socket, its own keep-alive
connection) asks /health every 5 ms.  The server process is pinned to the
first CPU.  For each loop (stock asyncio, uvloop, aem on both backends)
and each way of using priorities:

- plain: no priorities at all (must be stock speed);
- routes: ``aem_loop.aiohttp.route_priorities(app, {"/health": HIGH})``;
- site: /health's probe connects to a second site started under
  ``priority(HIGH)`` (per-site priority, a second port).

``--connect``: the probe opens a new connection for each /health request
(``Connection: close``), as most health checkers do, and counts from the
connect to the whole answer; a request leaves when due or, if the previous
one is still unanswered, when it is answered (those due meanwhile are
counted as missed).

Without it, the probe is open-loop: a request every 5 ms whatever the
answers, each on an idle connection of its own set of 64 keep-alive
connections (each has
answered one request before the measured period), so every loop serves the
same /health work. The probe runs at real-time priority (SCHED_FIFO) where
permitted, so that it is not scheduled behind wrk on the CPU they share.
Reported: /health p50/p99/max (ms) (the latency counts from when the request
was due) and /bulk work done per second of the server's CPU time while the
probe ran (from when its connections are warm to its last answer: every
loop's window holds the same /health load), in requests (0.5 ms slices done
/ 8: the server is saturated, and whole requests end in waves of 64, so
neither a count of them nor wrk's own requests/s can show a few percent in
3 s), medians over the runs (runs
interleaved; a ratio is the median of the ratios to the stock loop measured
next to it in the same run); the stock loops run the same app without
priorities in every mode.

``--app hello``: aiohttp's hello world instead (``/`` answers "Hello,
World!"), flooded by wrk with 50 connections, the probe as above; modes
plain, prio (a priority used in the process before serving: what any
program that uses priorities has done) and site.  The figure is requests
per second of the server's CPU time (the server is saturated), beside
wrk's own requests/s.  Each run starts fresh server processes (``--procs``
per mode and loop): two server processes of the same code measured side
by side differ by a few percent for as long as they live (memory layout,
hash seeds), so a ratio is taken per pair of processes (an aem server and
its stock loop's, loaded one right after the other, ``--cycles`` times)
and the median over the pairs reported.  ``--close``: wrk asks for one
request per connection (``Connection: close``), so every request also
costs an accept, a registration and a close.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from aem_loop._options import parse_option
from aem_loop.bench.common import ask_to_stop, child, machine, save_results, stop_all

LOOPS = ("asyncio", "uvloop", "aem-selector", "aem-uvloop")
MODES = ("plain", "routes", "site")
HELLO_MODES = ("plain", "prio", "site")
# The stock loop each aem backend is compared with.
REFERENCE = {"aem-selector": "asyncio", "aem-uvloop": "uvloop"}
PROBE_INTERVAL = 0.005


# -- the server (a child process) --------------------------------------------------------

def serve(loop_name: str, mode: str, options: str = "", app_kind: str = "bulk") -> None:
    import asyncio

    from aiohttp import web

    import aem_loop
    import aem_loop.aiohttp

    os.sched_setaffinity(0, {0})

    served = [0.0]
    probed = [0]

    async def bulk(request: web.Request) -> web.Response:
        for _ in range(8):
            end = time.perf_counter() + 0.0005
            while time.perf_counter() < end:
                pass
            # counted per slice: the 64 connections' requests progress in
            # step (each task one slice per round), so whole requests end in
            # waves of 64 every ~0.26 s, and a count of them in a 3 s window
            # is off by up to a wave (~9%)
            served[0] += 0.125
            await asyncio.sleep(0)
        return web.Response(text="bulk")

    async def health(request: web.Request) -> web.Response:
        probed[0] += 1
        return web.Response(text="ok")

    async def hello(request: web.Request) -> web.Response:
        served[0] += 1
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/bulk", bulk)
    app.router.add_get("/", hello)
    app.router.add_get("/health", health)
    aem = loop_name.startswith("aem-")
    if aem and mode == "routes":
        aem_loop.aiohttp.route_priorities(app, {"/health": aem_loop.Priority.HIGH})

    async def main(argv: list[str] | None = None) -> None:
        if aem and mode == "prio":
            with aem_loop.priority(aem_loop.Priority.HIGH):
                await asyncio.sleep(0)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        probe_port = port
        if mode == "site":
            if aem:
                with aem_loop.priority(aem_loop.Priority.HIGH):
                    site2 = web.TCPSite(runner, "127.0.0.1", 0)
                    await site2.start()
            else:
                site2 = web.TCPSite(runner, "127.0.0.1", 0)
                await site2.start()
            probe_port = runner.addresses[1][1]
        print(port, probe_port, flush=True)
        loop = asyncio.get_running_loop()
        # "mark" lines from the parent: /bulk requests served and the server's
        # CPU seconds since the last mark ("stop" ends it)
        mark = (served[0], time.process_time(), time.perf_counter(), probed[0])
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "mark":
            now = (served[0], time.process_time(), time.perf_counter(), probed[0])
            print(*(b - a for a, b in zip(mark, now, strict=True)), flush=True)
            mark = now
        await runner.cleanup()

    if loop_name == "asyncio":
        asyncio.run(main())
    elif loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        opts: dict[str, Any] = dict(parse_option(o) for o in options.split(",") if o)
        aem_loop.run(main(), backend=loop_name.split("-", 1)[1], **opts)


# -- the probe (a child process) ---------------------------------------------------------

def _realtime() -> bool:
    """Put this process ahead of wrk on the CPU they share (SCHED_FIFO), so
    that its requests leave when due: without it the probe's own lateness
    (scheduled behind a busy wrk, ~0.6 ms median here) is counted as the
    server's.  Needs CAP_SYS_NICE (root); whether it got it is reported."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        return False
    return True


PROBE_CONNECTIONS = 64


def _answer(s: socket.socket) -> None:
    """Read a /health answer off the blocking socket *s*."""
    buf = b""
    while not buf.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("server closed a probe connection before answering")
        buf += chunk


def probe_connect(port: int, duration: float) -> None:
    """A /health request every PROBE_INTERVAL, each on a new connection
    (``Connection: close``), as most health checkers make them: the latency
    counts from the connect to the whole answer (not to the server's close,
    which a client that knows the length does not wait for); the next
    request leaves when due or when the previous one is answered, whichever
    is later.  Prints the latencies."""
    os.sched_setaffinity(0, {1})
    realtime = _realtime()
    req = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    print("warm", flush=True)  # nothing to warm: the measured period starts now
    out: list[float] = []
    missed = 0
    start = time.perf_counter()
    end = start + duration
    due = start
    while due < end:
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(req)
            _answer(s)
        out.append(time.perf_counter() - t0)
        nxt = due + PROBE_INTERVAL
        while nxt < time.perf_counter() and nxt < end:  # a request per interval missed
            missed += 1
            nxt += PROBE_INTERVAL
        due = nxt
    print(json.dumps({"latency": out, "missed": missed, "realtime": realtime}))


def probe(port: int, duration: float) -> None:
    """Open loop: a /health request every PROBE_INTERVAL whatever the answers,
    each on an idle keep-alive connection of a set of PROBE_CONNECTIONS, so
    every loop serves the same /health work; prints the latencies."""
    import selectors

    os.sched_setaffinity(0, {1})
    realtime = _realtime()
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    # select(2) takes its timeout in microseconds (epoll_wait and poll in whole
    # milliseconds: a request would leave up to 1 ms after it was due)
    sel = selectors.SelectSelector()
    idle = []
    for _ in range(PROBE_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        idle.append(s)
    # Every connection answers once before the measured period (not counted;
    # all at once, so that it is short on every loop): the figure is a
    # request's latency on an established keep-alive connection.
    # (Connections opened at once are accepted at different speeds: the
    # selector backend accepts a batch per readiness, libuv one per loop
    # iteration, ~1 ms apart under this flood.)
    for s in idle:
        s.sendall(req)
    for s in idle:
        _answer(s)
        s.setblocking(False)
    print("warm", flush=True)  # the measured period starts now
    sent: dict[socket.socket, tuple[float, bytes]] = {}
    out: list[float] = []
    missed = 0
    start = time.perf_counter()
    end = start + duration
    k = 0
    while True:
        now = time.perf_counter()
        due = start + k * PROBE_INTERVAL
        if due <= now and due < end:
            k += 1
            if idle:
                s = idle.pop()
                s.send(req)
                sent[s] = (due, b"")
                sel.register(s, selectors.EVENT_READ)
            else:
                missed += 1
            continue
        if now >= end and not sent:
            break
        timeout = max(0.0, min(due, end) - now) if now < end else 1.0
        for key, _ in sel.select(timeout):
            s = key.fileobj  # type: ignore[assignment]
            t0, buf = sent[s]
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("server closed a probe connection")
            buf += chunk
            if buf.endswith(b"ok"):
                out.append(time.perf_counter() - t0)
                del sent[s]
                sel.unregister(s)
                idle.append(s)
            else:
                sent[s] = (t0, buf)
    for s in idle:
        s.close()
    print(json.dumps({"latency": out, "missed": missed, "realtime": realtime}))


# -- one measurement ---------------------------------------------------------------------

def mark(srv: subprocess.Popen[str]) -> list[float]:
    """Ask a ``--serve`` server for what it did since its last mark:
    requests served, CPU seconds, wall seconds, /health probes answered."""
    assert srv.stdin is not None and srv.stdout is not None
    srv.stdin.write("mark\n")
    srv.stdin.flush()
    return [float(x) for x in srv.stdout.readline().split()]


def start_hello(loop_name: str, mode: str, options: str = "",
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """A hello-world ``--serve`` server process (its pipes open; stop it with
    ``stop_all``) and the port of its first site."""
    srv = subprocess.Popen([sys.executable, "-m", "aem_loop.bench.aiohttp_routes", "--serve",
                            loop_name, mode, options, "hello"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert srv.stdout is not None
    return srv, int(srv.stdout.readline().split()[0])


def measure(loop_name: str, mode: str, duration: float, options: str = "",
            app_kind: str = "bulk", connect: bool = False) -> dict[str, float]:
    me = "-m", "aem_loop.bench.aiohttp_routes"  # the roles run as modules of the package
    conns, path = (64, "/bulk") if app_kind == "bulk" else (50, "/")
    with child([sys.executable, *me, "--serve", loop_name, mode, options, app_kind],
               stdin=subprocess.PIPE, stdout=subprocess.PIPE) as srv:
        assert srv.stdout is not None and srv.stdin is not None
        port, probe_port = map(int, srv.stdout.readline().split())
        # wrk runs until the window is over (SIGINT: it stops and reports)
        wrk = subprocess.Popen(
            ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{math.ceil(duration) + 30}s",
             f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # the flood is on before the probe starts
        pr = subprocess.Popen([sys.executable, *me, "--probe-connect" if connect else "--probe",
                               str(probe_port), str(duration)],
                              stdout=subprocess.PIPE, text=True)
        assert pr.stdout is not None
        # The window opens when the probe's connections are warm (each answered
        # once: on a stock loop under the flood that takes ~2 s, all /bulk), so
        # that every loop's window holds the same /health load.
        if pr.stdout.readline().strip() != "warm":
            raise RuntimeError(f"{loop_name}/{mode}: the probe did not start")
        mark(srv)
        probe_out, _ = pr.communicate()
        if pr.returncode:
            raise RuntimeError(f"{loop_name}/{mode}: the probe failed ({pr.returncode})")
        if wrk.poll() is not None:
            raise RuntimeError(f"{loop_name}/{mode}: the wrk flood ended before the probe did; "
                               "the /health figures would not be under load")
        n, cpu, wall, probes = mark(srv)
        wrk.send_signal(signal.SIGINT)
        wout, _ = wrk.communicate(timeout=30)
        ask_to_stop(srv, "stop\n")
    got = json.loads(probe_out)
    lat = np.array(got["latency"]) * 1e3
    m = re.search(r"Requests/sec:\s+([\d.]+)", wout)
    return {
        "health_p50_ms": float(np.percentile(lat, 50)),
        "health_p99_ms": float(np.percentile(lat, 99)),
        "health_max_ms": float(lat.max()),
        "probes": len(lat),
        "probes_missed": got["missed"],
        "probe_realtime": float(got["realtime"]),
        "wrk_rps": float(m.group(1)) if m else float("nan"),
        # served by the server while the probe ran, per second of its CPU time
        # (wrk's own count steps by whole rounds of its 64 connections: ~7%)
        "bulk_rps": n / cpu,
        "bulk_wall_rps": n / wall,
        "health_per_s": probes / wall,
    }


def _pairs(loops: list[str]) -> list[tuple[str, ...]]:
    """The loops measured back to back: each aem backend right beside its
    stock loop (asyncio for aem-selector, uvloop for aem-uvloop); a loop
    without its partner on its own."""
    out: list[tuple[str, ...]] = [(ref, aem) for aem, ref in REFERENCE.items()
                                  if ref in loops and aem in loops]
    paired = {n for p in out for n in p}
    return out + [(n,) for n in loops if n not in paired]


def hello_bursts(loops: list[str], modes: list[str], cycles: int, burst: float,
                 options: str, run: int = 0, procs: int = 1,
                 close: bool = False) -> dict[str, dict[str, list[dict[str, float]]]]:
    """One run of hello-world throughput, interleaved: *procs* fresh server
    processes per (mode, loop) all run at once (started in an order rotated
    by *run*); wrk loads one at a time for *burst* seconds.  An aem server's
    burst comes right before or after the burst of its stock loop's server
    of the same number (the order within the pair alternates from cycle to
    cycle, the pairs rotate), so that the two compared see the same machine:
    this VM's speed drifts by tens of percent within seconds.  *close*: wrk
    asks for one request per connection (``Connection: close``)."""
    header = ["-H", "Connection: close"] if close else []
    groups = [(mode, pair, i) for mode in modes for pair in _pairs(loops)
              for i in range(procs)]
    groups = groups[run % len(groups):] + groups[:run % len(groups)]
    servers: dict[tuple[str, str, int], tuple[subprocess.Popen[str], int]] = {}
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for mode, pair, i in groups:
            for name in pair:
                servers[mode, name, i] = start_hello(name, mode, options)
        for c in range(cycles):
            for j in range(len(groups)):
                mode, pair, i = groups[(c + j) % len(groups)]
                for name in (pair if c % 2 == 0 else pair[::-1]):
                    srv, port = servers[mode, name, i]
                    mark(srv)
                    w = subprocess.run(
                        ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{burst:g}s",
                         *header, f"http://127.0.0.1:{port}/"],
                        capture_output=True, text=True, check=True)
                    n, cpu, _, _ = mark(srv)
                    m = re.search(r"Requests/sec:\s+([\d.]+)", w.stdout)
                    out.setdefault(mode, {}).setdefault(name, []).append({
                        "wrk_rps": float(m.group(1)) if m else float("nan"),
                        "per_cpu_s": n / cpu if cpu else float("nan"),
                        "cycle": c,
                        "run": run,
                        "proc": i,
                    })
            print(f"run {run + 1} cycle {c + 1}/{cycles}", flush=True)
    finally:
        stop_all([srv for srv, _ in servers.values()])
    return out


def pair_ratios(rs: list[dict[str, float]], refs: list[dict[str, float]],
                key: str) -> list[float]:
    """Per pair of server processes (a run's aem server and the stock one of
    the same number, measured back to back): the median over the cycles of
    the ratio of their bursts' *key*."""
    ref = {(r["run"], r.get("proc", 0), r["cycle"]): r[key] for r in refs}
    by_pair: dict[tuple[float, float], list[float]] = {}
    for r in rs:
        k = (r["run"], r.get("proc", 0))
        by_pair.setdefault(k, []).append(r[key] / ref[(*k, r["cycle"])])
    return [statistics.median(v) for v in by_pair.values()]


def hello_report(a: argparse.Namespace, loops: list[str], modes: list[str]) -> None:
    cycles, procs = a.cycles, a.procs
    per: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in range(a.runs):
        got = hello_bursts(loops, modes, cycles, 1.0, a.aem_options, run, procs, a.close)
        for mode, by_loop in got.items():
            for name, rs in by_loop.items():
                per.setdefault(mode, {}).setdefault(name, []).extend(rs)
    lat: dict[str, list[dict[str, float]]] = {}
    for _ in range(a.runs):  # the urgent route's latency: site mode, probe on the HIGH site
        for name in loops:
            lat.setdefault(name, []).append(measure(name, "site", a.duration, a.aem_options,
                                                    "hello", a.connect))
    lines = [
        "# aiohttp hello world: throughput with priorities in use",
        "",
        f"Machine: {machine()}. wrk -t1 -c50 on CPU 1"
        + (", one request per connection (Connection: close)" if a.close else "")
        + ". Server on CPU 0. Throughput: "
        f"{a.runs} runs, each with {procs} fresh server process(es) per mode and loop, all "
        f"running at once while wrk loads each for 1 s in turn, {cycles} cycles; an aem "
        "server's burst is right beside the burst of its stock loop's server (uvloop for "
        "aem-uvloop, asyncio otherwise), the order within the pair alternating. Figures "
        "are medians over all bursts; a ratio is the median over the "
        f"{a.runs * procs} pairs of server processes of each pair's median per-cycle "
        "ratio, with the pairs' interquartile range. "
        "Modes: plain (no priorities), prio (a priority used in the process before "
        "serving), site (a second site listening under Priority.HIGH), routes "
        "(route_priorities with /health at HIGH; wrk asks for /). /health: probed "
        f"every {PROBE_INTERVAL * 1e3:.0f} ms on the HIGH site (a plain second site on the "
        "stock loops)" + (", a new connection per request," if a.connect else "")
        + f" during a {a.duration:g} s flood, medians of {a.runs} runs.",
        "Command: `python benchmarks/aiohttp_routes.py --app hello "
        + ("--close " if a.close else "") + ("--connect " if a.connect else "")
        + ("" if tuple(modes) == HELLO_MODES else f"--modes {','.join(modes)} ")
        + f"--runs {a.runs} --procs {procs} --cycles {cycles} --duration {a.duration:g}`",
        "",
        "| mode | loop | wrk req/s | vs stock | req per server CPU-s | vs stock |",
        "|---|---|---|---|---|---|",
    ]

    def ratio(mode: str, name: str, k: str) -> str:
        ref = per[mode].get(REFERENCE.get(name, ""))
        if not ref:
            return ""
        got = pair_ratios(per[mode][name], ref, k)
        if len(got) < 4:
            return f"{statistics.median(got):.3f}x"
        q1, _, q3 = statistics.quantiles(got, n=4)
        return f"{statistics.median(got):.3f}x ({q1:.2f}-{q3:.2f})"

    for mode in modes:
        for name in loops:
            rs = per[mode][name]
            lines.append(f"| {mode} | {name} | "
                         f"{statistics.median(r['wrk_rps'] for r in rs):.0f} | "
                         f"{ratio(mode, name, 'wrk_rps')} | "
                         f"{statistics.median(r['per_cpu_s'] for r in rs):.0f} | "
                         f"{ratio(mode, name, 'per_cpu_s')} |")
    lines += ["", "| loop | /health p50 ms | /health p99 ms | /health max ms |",
              "|---|---|---|---|"]
    for name in loops:
        m = {k: statistics.median(r[k] for r in lat[name])
             for k in ("health_p50_ms", "health_p99_ms", "health_max_ms")}
        lines.append(f"| {name} | {m['health_p50_ms']:.2f} | {m['health_p99_ms']:.2f} | "
                     f"{m['health_max_ms']:.2f} |")
    print("\n".join(lines))
    # other modes than the default set: a table of their own
    name = "aiohttp_hello" + ("_close" if a.close else "") + (
        "" if tuple(modes) == HELLO_MODES else "_" + "_".join(modes))
    save_results(a.out, name,
                 "\n".join(lines) + "\n", {"bursts": per, "latency": lat})


def _run_ratio(runs: list[dict[str, float]], refs: list[dict[str, float]], key: str) -> str:
    """The median over the runs of a loop's figure over the stock loop's
    measured next to it in the same run."""
    return f"{statistics.median(r[key] / q[key] for r, q in zip(runs, refs, strict=False)):.3f}x"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--modes", default=None,
                    help=f"default: {','.join(MODES)}; with --app hello {','.join(HELLO_MODES)}")
    ap.add_argument("--app", choices=("bulk", "hello"), default="bulk")
    ap.add_argument("--procs", type=int, default=3,
                    help="--app hello: server processes per mode and loop in each run")
    ap.add_argument("--cycles", type=int, default=6,
                    help="--app hello: bursts of 1 s per server in each run")
    ap.add_argument("--aem-options", default="",
                    help="loop options for the aem servers, e.g. time_slice=0.001")
    ap.add_argument("--close", action="store_true",
                    help="--app hello: wrk asks for one request per connection "
                         "(Connection: close)")
    ap.add_argument("--connect", action="store_true",
                    help="/health on a new connection per request (as health checkers "
                         "make them) instead of idle keep-alive connections")
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--probe-connect", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(*a.serve)
        return
    if a.probe:
        probe(int(a.probe[0]), float(a.probe[1]))
        return
    if a.probe_connect:
        probe_connect(int(a.probe_connect[0]), float(a.probe_connect[1]))
        return
    loops = a.loops.split(",")
    modes = (a.modes or ",".join(MODES if a.app == "bulk" else HELLO_MODES)).split(",")
    if a.app == "hello":
        hello_report(a, loops, modes)
        return
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in range(a.runs):
        for mode in modes:
            for name in loops:
                r = measure(name, mode, a.duration, a.aem_options, a.app, a.connect)
                results.setdefault(mode, {}).setdefault(name, []).append(r)
                print(f"run {run + 1}/{a.runs} {mode:6} {name:13} /health p50 "
                      f"{r['health_p50_ms']:7.2f} p99 {r['health_p99_ms']:7.2f} ms, "
                      f"{a.app} {r['bulk_rps']:8.0f} req/CPU-s, wrk {r['wrk_rps']:8.0f} "
                      "req/s", flush=True)
    hello = a.app == "hello"
    what, conns = ("/ (hello world)", 50) if hello else ("/bulk", 64)
    how = ("a new connection per request (the latency counts from the connect)"
           if a.connect else "idle keep-alive connections")
    lines = [
        f"# aiohttp: /health latency under a {what} flood",
        "",
        f"Machine: {machine()}. wrk -t1 -c{conns} on CPU 1, server on CPU 0, probe every "
        f"{PROBE_INTERVAL * 1e3:.0f} ms on CPU 1 on {how}; {a.duration:.0f} s per cell, "
        f"medians of {a.runs} interleaved runs.",
        "Command: `python benchmarks/aiohttp_routes.py "
        + ("--app hello " if hello else "") + ("--connect " if a.connect else "")
        + f"--runs {a.runs} --duration {a.duration:g}`",
        "",
        "| mode | loop | /health p50 ms | /health p99 ms | /health max ms | /health served/s "
        f"| {what} per CPU-s | vs stock | wrk req/s | vs stock |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        med = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for name, rs in results[mode].items()
        }

        for name in loops:
            m = med[name]
            ref_name = REFERENCE.get(name, "")
            ratio = wratio = ""
            if ref_name in med:
                ratio = _run_ratio(results[mode][name], results[mode][ref_name], "bulk_rps")
                wratio = _run_ratio(results[mode][name], results[mode][ref_name], "wrk_rps")
            lines.append(f"| {mode} | {name} | {m['health_p50_ms']:.2f} | "
                         f"{m['health_p99_ms']:.2f} | {m['health_max_ms']:.2f} | "
                         f"{m['health_per_s']:.0f} | {m['bulk_rps']:.0f} | {ratio} | "
                         f"{m['wrk_rps']:.0f} | {wratio} |")
    name = "aiohttp_hello" if hello else "aiohttp_routes"
    save_results(a.out, name + ("_connect" if a.connect else ""), "\n".join(lines) + "\n",
                 {"results": results})


if __name__ == "__main__":
    main()
