"""AEMhttpd: a single-threaded HTTP/1.1 static file server on the events API.

Every socket is an event (``loop.add_event``): the listening socket a
``Readable`` event whose handler accepts, each connection a ``SocketData``
event with the ``HTTPHead`` framer, so its handler is activated with
complete requests only, and only when data arrived: an idle connection
costs nothing per loop iteration.  A blocked response waits for a
one-shot ``Writable`` event; large files go out with ``os.sendfile``.
A soft timer per connection (the loop's timer wheel) cuts idle clients
and slowloris clients whose request head does not complete in time.
A route table (path prefix -> priority) classifies each request from its
request line at job level, so urgent requests are served before a backlog
of others (see ``SocketData(classify=...)``).

::

    aem-loop httpd [DIR] [--port 8080] [--backend selector|uvloop]

or from a program::

    server = aem_loop.httpd.HTTPServer("public", port=8080,
                                       routes={"/status": aem_loop.Priority.HIGH})
    await server.start()
    await server.serve_forever()      # until server.close() (graceful)
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import errno
import mimetypes
import os
import signal
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from .capsules.cloner import EventFlags
from .core.priority import check_priority, current_priority
from .events.framers import (
    FrameTooLarge,
    FramingError,
    HTTPHead,
    HTTPRequest,
    IncompleteMessage,
)
from .events.sources import Readable, Signal, SocketData, Writable

__all__ = ["HTTPServer", "main", "serve"]

SERVER = b"AEMhttpd"
REASONS = {
    200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
ACCEPT_BATCH = 64  # connections accepted per activation of the listening socket
SENDFILE_CHUNK = 1 << 20
CACHE_FILE_MAX = 256 * 1024  # files up to this size are kept in memory ...
CACHE_TOTAL_MAX = 64 * 1024 * 1024  # ... up to this much in all

_EMPTY: tuple[str, ...] = ()


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


class _Clock:
    """The Date header, formatted once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def date(self) -> bytes:
        now = time.time()
        sec = int(now)
        if sec != self.second:
            self.second = sec
            self.value = _http_date(now).encode("ascii")
        return self.value


class _Failure:
    """A framing error turned into the connection's last response."""

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


class _FileBody:
    """The rest of a large file, sent with os.sendfile."""

    __slots__ = ("fd", "offset", "remaining")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.offset = 0
        self.remaining = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Cached:
    __slots__ = ("body", "ctype", "key", "modified")

    def __init__(self, key: tuple[int, int, int], body: bytes, ctype: str, modified: str) -> None:
        self.key = key
        self.body = body
        self.ctype = ctype
        self.modified = modified


def _status_for(exc: FramingError) -> _Failure:
    if isinstance(exc, FrameTooLarge):
        return _Failure(413 if exc.what == "body" else 431, str(exc))
    return _Failure(400, str(exc))  # BadMessage


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
        self._conns: set[_Connection] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._clock = _Clock()
        self._cache: dict[str, _Cached] = {}
        self._lookups: dict[str, tuple[int, str, Any]] = {}
        self._lookups_second = -1
        self._cache_bytes = 0
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
                _Connection(self, conn)
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

    def _lookup(self, target: str) -> tuple[int, str, Any]:
        """(status, real path, stat) of a request target; what the file
        system said is reused for one second (a file that changes is seen
        within a second, as with nginx's open_file_cache_valid 1s)."""
        sec = int(self._loop.time())
        if sec != self._lookups_second:
            self._lookups.clear()
            self._lookups_second = sec
        hit = self._lookups.get(target)
        if hit is None:
            status, real = self._resolve(target)
            st = None
            if status == 200:
                try:
                    st = os.stat(real)
                except OSError:
                    st = None
                if st is None or not stat.S_ISREG(st.st_mode):
                    status = 404
            hit = (status, real, st)
            if len(self._lookups) < 4096:
                self._lookups[target] = hit
        return hit

    def _resolve(self, target: str) -> tuple[int, str]:
        """(status, real path): 200 and the file, or 400/403/404 and ''."""
        if not target.startswith("/"):
            if target.startswith(("http://", "https://")):  # absolute-form
                rest = target.split("://", 1)[1]
                slash = rest.find("/")
                target = rest[slash:] if slash >= 0 else "/"
            else:
                return 400, ""
        path = target.split("?", 1)[0].split("#", 1)[0]
        raw = unquote_to_bytes(path)
        if b"\0" in raw:
            return 403, ""
        segments = [s for s in raw.split(b"/") if s not in (b"", b".")]
        if b".." in segments:
            return 403, ""
        full = os.path.join(self.root, *(os.fsdecode(s) for s in segments))
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root + os.sep):
            return 403, ""  # a symlink leading out of the root
        if os.path.isdir(real):
            real = os.path.join(real, "index.html")
        return 200, real

    def _cached(self, real: str, st: os.stat_result) -> _Cached | None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(real)
        if hit is not None and hit.key == key:
            return hit
        if st.st_size > CACHE_FILE_MAX:
            return None
        try:
            with open(real, "rb") as f:
                body = f.read(st.st_size + 1)
        except OSError:
            return None
        if len(body) != st.st_size:
            return None  # changing under us: not cached
        if hit is not None:
            self._cache_bytes -= len(hit.body)
            del self._cache[real]
        while self._cache and self._cache_bytes + len(body) > CACHE_TOTAL_MAX:
            old = self._cache.pop(next(iter(self._cache)))
            self._cache_bytes -= len(old.body)
        entry = _Cached(key, body, _content_type(real), _http_date(st.st_mtime))
        self._cache[real] = entry
        self._cache_bytes += len(body)
        return entry


def _content_type(path: str) -> str:
    ctype, enc = mimetypes.guess_type(path, strict=False)
    if ctype is None or enc is not None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        return ctype + "; charset=utf-8"
    return ctype


def _not_modified(req: HTTPRequest, mtime: float) -> bool:
    ims = req.header("if-modified-since")
    if ims is None:
        return False
    try:
        when = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False  # an unparsable date is ignored (RFC 9110 13.1.3)
    if when.tzinfo is None:
        return False
    return int(mtime) <= when.timestamp()


class _Connection:
    """One client: a SocketData event, a write queue, a soft timer."""

    __slots__ = (
        "eof",
        "ev",
        "final",
        "framer",
        "grace",
        "last_progress",
        "level",
        "loop",
        "out",
        "out_bytes",
        "queue",
        "ready_at",
        "server",
        "sock",
        "timer",
        "wev",
    )

    def __init__(self, server: HTTPServer, sock: socket.socket) -> None:
        self.server = server
        self.loop = loop = server._loop
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = HTTPHead(server.max_head, max_body=server.max_body)
        self.out: deque[Any] = deque()  # bytes and _FileBody, in order
        self.out_bytes = 0
        self.queue: deque[Any] = deque()  # requests not answered yet
        self.final = False  # the last response is queued: close when it is out
        self.eof = False
        self.wev: Any = None
        self.level = server.priority
        self.grace = False
        now = loop.time()
        self.ready_at = self.last_progress = now
        classify = server._classify if server._routes else None
        self.ev = loop.add_event(
            SocketData(sock, self.framer, high_water=server.max_head + server.max_body,
                       classify=classify),
            self._on_data, priority=server.priority, name="aemhttpd connection",
        )
        self.timer = loop.call_at(now + server.header_timeout, self._on_timer)
        server._conns.add(self)

    # -- events ---------------------------------------------------------------------------

    def _on_data(self, act: Any) -> None:
        if self.sock is None:
            return
        self.level = act.priority
        self.queue.extend(act.data)
        if act.error is not None:
            if isinstance(act.error, IncompleteMessage):
                self.eof = True  # the client went away inside a request
            elif isinstance(act.error, FramingError):
                self.queue.append(_status_for(act.error))  # answered in its turn, last
            else:  # reset by the peer, or another socket error: nobody to answer
                self.close()
                return
        elif act.eof:
            self.eof = True
        try:
            self._pump()
        except BaseException:
            self.close()
            raise

    def _on_writable(self, act: Any) -> None:
        self.wev = None
        if self.sock is not None:
            try:
                self._pump()
            except BaseException:
                self.close()
                raise

    def _on_timer(self) -> None:
        if self.sock is None:
            return
        s = self.server
        now = self.loop.time()
        if self.out or self.queue:  # a response waits for the client to read it
            due = self.last_progress + s.timeout
        elif self.framer.buffered():  # inside a request head
            since = now - self.ready_at
            if since < s.header_timeout + 1e-3 or self.grace:
                s.stats["timeouts"] += 1
                self._cut(408)
                return
            # the head began after a long idle time: it gets header_timeout
            self.grace = True
            due = now + s.header_timeout
        else:  # idle between requests
            due = self.ready_at + s.timeout
            if now < self.ready_at + s.header_timeout:
                due = self.ready_at + s.header_timeout
        if now >= due:
            s.stats["timeouts"] += 1
            self.close()
            return
        self.timer = self.loop.call_at(due, self._on_timer)

    # -- answering ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Answer what is queued while the output has room, send, and decide
        whether to read more (flow control) or to close."""
        s = self.server
        while True:
            while self.queue and not self.final and self.out_bytes < s.max_output:
                self._respond(self.queue.popleft())
            if not self._send():
                return  # closed
            if self.out or not self.queue or self.final:
                break
        if self.out:
            if self.ev.registered:
                self.ev.pause()
            if self.wev is None:
                self.wev = self.loop.add_event(
                    Writable(self.sock), self._on_writable, priority=self.level,
                    flags=EventFlags.ONESHOT, name="aemhttpd writable",
                )
            return
        if self.final or self.eof:
            self.close()
            return
        if s._closing and not self.framer.buffered():
            self.close()
            return
        self.ready_at = self.loop.time()
        self.grace = False
        self.ev.resume()

    def _send(self) -> bool:
        """Send what the socket takes.  False when the connection closed."""
        out = self.out
        sock = self.sock
        while out:
            item = out[0]
            if type(item) is _FileBody:
                try:
                    n = os.sendfile(sock.fileno(), item.fd, item.offset,
                                    min(item.remaining, SENDFILE_CHUNK))
                except (BlockingIOError, InterruptedError):
                    return True
                except OSError:
                    self.close()
                    return False
                if n == 0:  # the file shrank under us: the response cannot be completed
                    self.close()
                    return False
                item.offset += n
                item.remaining -= n
                self.out_bytes -= n
                self.server.stats["bytes_sent"] += n
                self.last_progress = self.loop.time()
                if item.remaining:
                    continue
                item.close()
                out.popleft()
                continue
            if len(out) > 1 and type(out[1]) is not _FileBody:
                # responses queued together leave in one send
                parts = [out.popleft()]
                while out and type(out[0]) is not _FileBody:
                    parts.append(out.popleft())
                item = b"".join(parts)
                out.appendleft(item)
            try:
                n = sock.send(item)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.close()
                return False
            self.out_bytes -= n
            self.server.stats["bytes_sent"] += n
            self.last_progress = self.loop.time()
            if n < len(item):
                out[0] = item[n:]
                return True
            out.popleft()
        return True

    def _respond(self, req: Any) -> None:
        s = self.server
        if type(req) is _Failure:
            self._emit(req.status, None, keep=False, body=f"{req.detail}\n".encode())
            return
        s.stats["requests"] += 1
        keep = req.keep_alive and not self.eof and not (s._closing and not self.queue)
        if req.version == "HTTP/1.1" and req.header("host") is None:
            self._emit(400, req, keep=False, body=b"HTTP/1.1 request without Host\n")
            return
        if req.method not in ("GET", "HEAD"):
            self._emit(405, req, keep=keep, extra="Allow: GET, HEAD\r\n")
            return
        status, real, st = s._lookup(req.target)
        if status != 200:
            self._emit(status, req, keep=keep and status != 400)
            return
        if _not_modified(req, st.st_mtime):
            self._emit(304, req, keep=keep, length=False,
                       extra=f"Last-Modified: {_http_date(st.st_mtime)}\r\n")
            return
        head = req.method == "HEAD"
        if st.st_size < s.sendfile_min:
            entry = s._cached(real, st)
            if entry is not None:
                self._emit(200, req, keep=keep, body=entry.body, ctype=entry.ctype,
                           extra=f"Last-Modified: {entry.modified}\r\n", head_only=head)
                return
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._emit(404, req, keep=keep)
            return
        size = os.fstat(fd).st_size
        self._emit(200, req, keep=keep, ctype=_content_type(real), length_value=size,
                   extra=f"Last-Modified: {_http_date(st.st_mtime)}\r\n", head_only=True)
        if head or size == 0:
            os.close(fd)
        else:
            self.out.append(_FileBody(fd, size))
            # a file body counts by its size: answering stops behind it, so a
            # client that pipelines requests for large files without reading
            # holds one open file, not one per request
            self.out_bytes += size
            if self.out_bytes > s.stats["peak_output"]:
                s.stats["peak_output"] = self.out_bytes

    def _emit(self, status: int, req: HTTPRequest | None, *, keep: bool,
              body: bytes | None = None, ctype: str = "text/plain; charset=utf-8",
              extra: str = "", length: bool = True, length_value: int | None = None,
              head_only: bool = False) -> None:
        s = self.server
        s.statuses[status] = s.statuses.get(status, 0) + 1
        if body is None and length_value is None and status not in (304,):
            body = f"{status} {REASONS[status]}\n".encode()
        if req is not None and req.method == "HEAD":
            head_only = True
        size = length_value if length_value is not None else len(body or b"")
        version = "HTTP/1.0" if req is not None and req.version == "HTTP/1.0" else "HTTP/1.1"
        conn = ("Connection: keep-alive\r\n" if version == "HTTP/1.0" else "") if keep \
            else "Connection: close\r\n"
        lines = (
            f"{version} {status} {REASONS[status]}\r\nServer: AEMhttpd\r\n"
            f"Date: {s._clock.date().decode()}\r\n{conn}{extra}"
        )
        if length:
            lines += f"Content-Type: {ctype}\r\nContent-Length: {size}\r\n"
        data = (lines + "\r\n").encode("latin-1")
        if body and not head_only:
            data += body
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes > s.stats["peak_output"]:
            s.stats["peak_output"] = self.out_bytes
        if s.access_log is not None:
            s.access_log(req.method if req is not None else "-",
                         req.target if req is not None else "-", status, size,
                         current_priority())
        if not keep:
            self.final = True
            self.queue.clear()

    def _cut(self, status: int) -> None:
        """Best effort: tell the client why, then close."""
        try:
            self.sock.send(f"HTTP/1.1 {status} {REASONS[status]}\r\nConnection: close\r\n"
                           f"Content-Length: 0\r\n\r\n".encode())
        except OSError:
            pass
        self.close()

    def shutdown(self) -> None:
        """The server is closing: an idle connection closes now, a busy one
        after the requests it received are answered."""
        if self.sock is None:
            return
        if not self.out and not self.queue and not self.framer.buffered():
            self.close()

    def close(self) -> None:
        if self.sock is None:
            return
        self.ev.unregister()
        if self.wev is not None:
            self.wev.unregister()
            self.wev = None
        self.timer.cancel()
        for item in self.out:
            if type(item) is _FileBody:
                item.close()
        self.out.clear()
        self.queue.clear()
        self.sock.close()
        self.sock = None  # type: ignore[assignment]
        s = self.server
        s._conns.discard(self)
        s._check_done()


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
    from .core.priority import Priority

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
    from .api import new_event_loop

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


if __name__ == "__main__":
    sys.exit(main(prog="python -m aem_loop.httpd"))
