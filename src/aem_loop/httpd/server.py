"""AEMhttpd's server: the listening socket's event, the route table, the
life cycle (graceful close), and running it from the command line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

from ..core.priority import check_priority, current_priority
from ..events.sources import Readable, Signal
from .connection import Connection
from .files import Clock, StaticFiles

ACCEPT_BATCH = 64  # connections accepted per activation of the listening socket


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _limit(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class HTTPServer:
    """A static file server for *root* (GET and HEAD, HTTP/1.0 and 1.1).

    - keep-alive and pipelining (answers in request order);
    - ``Content-Length``, ``Content-Type``, ``Date``, ``Last-Modified``,
      ``Connection``; ``304`` on ``If-Modified-Since``;
    - ``400`` malformed request, ``403`` a path that leaves *root` (``..``,
      NUL, a symlink pointing outside), ``404``, ``405`` (other methods),
      ``413`` body over *max_body*, ``431`` head over *max_head*;
    - *timeout*: an idle keep-alive connection, or one whose client stopped
      reading a response, is closed after that long; *header_timeout*: a
      request head must be complete that long after the connection became
      ready for it (slowloris);
    - memory per connection is bounded: reading stops while *max_output*
      bytes of responses (a file body by its size) wait for the client, files
      over *sendfile_min* bytes are not read into memory, so a connection
      holds at most one open file;
    - *routes* ``{path prefix: priority}`` (longest prefix wins) decides each
      request's priority from its request line; others run at *priority*
      (default: the priority current at :meth:`start`);
    - *access_log*: called as ``access_log(method, target, status, size,
      priority)`` for each response (``priority``: the level it was
      answered at).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        routes: Mapping[str, int] | None = None,
        priority: int | None = None,
        timeout: float = 15.0,
        header_timeout: float = 10.0,
        max_head: int = 8192,
        max_body: int = 65536,
        max_output: int = 256 * 1024,
        sendfile_min: int = 64 * 1024,
        backlog: int = 1024,
        sock: socket.socket | None = None,
        access_log: Any = None,
    ) -> None:
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"AEMhttpd root {os.fspath(root)!r} is not a directory")
        self.root = real
        self.host = host
        self.port = _limit(port, "port", 0)
        self.priority = None if priority is None else check_priority(priority)
        self.timeout = _positive(timeout, "timeout")
        self.header_timeout = _positive(header_timeout, "header_timeout")
        self.max_head = _limit(max_head, "max_head", 64)
        self.max_body = _limit(max_body, "max_body", 0)
        self.max_output = _limit(max_output, "max_output")
        self.sendfile_min = _limit(sendfile_min, "sendfile_min")
        self.backlog = _limit(backlog, "backlog")
        self._routes: list[tuple[str, int]] = []
        for prefix, prio in (routes or {}).items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ValueError(f"a route is a path prefix starting with '/', not {prefix!r}")
            self._routes.append((prefix, check_priority(prio)))
        self._routes.sort(key=lambda r: len(r[0]), reverse=True)
        if access_log is not None and not callable(access_log):
            raise TypeError(f"access_log must be callable or None, got {access_log!r}")
        self.access_log = access_log
        self._sock = sock
        self._loop: Any = None
        self._listen_ev: Any = None
        self._conns: set[Connection] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._clock = Clock()
        self.files = StaticFiles(real)
        self.stats: dict[str, int] = {
            "connections": 0, "requests": 0, "timeouts": 0, "bytes_sent": 0,
            "accept_errors": 0, "peak_output": 0,
        }
        self.statuses: dict[int, int] = {}

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and register the listening socket's event."""
        loop = asyncio.get_running_loop()
        if not hasattr(loop, "add_event"):
            raise RuntimeError(
                f"AEMhttpd runs on an aem loop (aem_loop.run or aem_loop.new_event_loop), "
                f"not on {type(loop).__module__}.{type(loop).__name__}"
            )
        if self._loop is not None:
            raise RuntimeError("this HTTPServer was started already")
        self._loop = loop
        if self.priority is None:
            self.priority = current_priority()
        if self._sock is None:
            self._sock = socket.create_server((self.host, self.port), backlog=self.backlog)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._closed = loop.create_future()
        self._listen_ev = loop.add_event(Readable(self._sock), self._accept,
                                         priority=self.priority, name="aemhttpd accept")

    @property
    def sockets(self) -> list[socket.socket]:
        return [] if self._sock is None or self._sock.fileno() < 0 else [self._sock]

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._conns)

    async def serve_forever(self) -> None:
        """Wait until the server is closed and its connections are done."""
        if self._closed is None:
            await self.start()
        assert self._closed is not None
        await asyncio.shield(self._closed)

    def close(self) -> None:
        """Graceful: stop accepting, close idle connections, let requests
        already received be answered (their last response says
        ``Connection: close``), then close the rest."""
        if self._closing:
            return
        self._closing = True
        if self._listen_ev is not None:
            self._listen_ev.unregister()
        if self._sock is not None:
            self._sock.close()
        for conn in list(self._conns):
            conn.shutdown()
        self._check_done()

    async def wait_closed(self, timeout: float | None = 10.0) -> None:
        """After :meth:`close`: wait until every connection is done; after
        *timeout* seconds the stragglers are closed."""
        if self._closed is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            for conn in list(self._conns):
                conn.close()
            self._check_done()

    def abort(self) -> None:
        """Close everything now."""
        self.close()
        for conn in list(self._conns):
            conn.close()
        self._check_done()

    def _check_done(self) -> None:
        if self._closing and not self._conns and self._closed is not None \
                and not self._closed.done():
            self._closed.set_result(None)

    def statistics(self) -> dict[str, Any]:
        return {**self.stats, "open": len(self._conns), "statuses": dict(self.statuses)}

    # -- accepting ---------------------------------------------------------------------

    def _accept(self, act: Any) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors or memory: stop accepting for a while
                    # (the listen backlog holds the clients), do not spin
                    self.stats["accept_errors"] += 1
                    if self._listen_ev is not None and self._listen_ev.registered:
                        self._listen_ev.pause()
                        self._loop.call_later(0.1, self._listen_ev.resume)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            if self._closing:
                conn.close()
                continue
            self.stats["connections"] += 1
            try:
                Connection(self, conn)
            except BaseException:
                conn.close()
                raise

    # -- requests ----------------------------------------------------------------------

    def _classify(self, req: Any) -> int | None:
        path = req.target
        for prefix, prio in self._routes:
            if path.startswith(prefix):
                return prio
        return None


# -- running it --------------------------------------------------------------------------


async def serve(root: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8080,
                quiet: bool = False, **options: Any) -> HTTPServer:
    """Serve *root* until SIGINT or SIGTERM, then shut down gracefully."""
    server = HTTPServer(root, host=host, port=port, **options)
    await server.start()
    loop: Any = asyncio.get_running_loop()
    stops = [loop.add_event(Signal(sig), lambda act: server.close(), name="aemhttpd stop")
             for sig in (signal.SIGINT, signal.SIGTERM)]
    if not quiet:
        print(f"AEMhttpd serving {server.root} on http://{host}:{server.port}/ "
              f"({type(loop).__name__}); Ctrl-C stops", flush=True)
    try:
        await server.serve_forever()
    finally:
        for ev in stops:
            ev.unregister()
        server.close()
        await server.wait_closed()
    if not quiet:
        st = server.statistics()
        print(f"AEMhttpd stopped: {st['requests']} requests on {st['connections']} "
              f"connections", flush=True)
    return server


def build_parser(prog: str = "aem-loop httpd") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="AEMhttpd: serve a directory over "
                                 "HTTP/1.1, single-threaded, on aem_loop's events")
    ap.add_argument("root", nargs="?", default=".", metavar="DIR",
                    help="the directory to serve (default: the current one)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    ap.add_argument("--backend", default="selector", choices=("selector", "uvloop"))
    ap.add_argument("--route", action="append", default=[], metavar="PREFIX=PRIORITY",
                    help="serve requests whose path starts with PREFIX at PRIORITY "
                         "(0..99, or HIGH, LOW, ...); repeatable")
    ap.add_argument("--timeout", type=float, default=15.0,
                    help="close idle keep-alive connections after this many seconds")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="a request head must be complete within this many seconds")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _route(text: str) -> tuple[str, int]:
    from ..core.priority import Priority

    prefix, eq, prio = text.partition("=")
    if not eq:
        raise ValueError(f"--route wants PREFIX=PRIORITY, got {text!r}")
    value: int
    if prio.strip().lstrip("-").isdigit():
        value = int(prio)
    else:
        try:
            value = Priority[prio.strip().upper()]
        except KeyError:
            names = ", ".join(p.name for p in Priority)
            raise ValueError(f"--route {text!r}: priority must be 0..99 or one of "
                             f"{names}") from None
    return prefix, check_priority(value)


def main(argv: list[str] | None = None, prog: str = "aem-loop httpd") -> int:
    ap = build_parser(prog)
    a = ap.parse_args(argv)
    try:
        routes = dict(_route(r) for r in a.route)
    except ValueError as exc:
        ap.error(str(exc))
    from ..api import new_event_loop

    try:
        loop = new_event_loop(backend=a.backend)
    except ImportError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        loop.run_until_complete(serve(a.root, host=a.host, port=a.port, routes=routes,
                                      timeout=a.timeout, header_timeout=a.header_timeout,
                                      quiet=a.quiet))
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0
