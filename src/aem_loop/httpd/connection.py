"""One AEMhttpd connection: a SocketData event, a write queue, a soft timer."""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any

from ..capsules.cloner import EventFlags
from ..core.priority import current_priority
from ..events.framers import (
    FrameTooLarge,
    FramingError,
    HTTPHead,
    HTTPRequest,
    IncompleteMessage,
)
from ..events.sources import SocketData, Writable
from .files import FileBody, content_type, http_date, not_modified

REASONS = {
    200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
SENDFILE_CHUNK = 1 << 20


class Failure:
    """A framing error turned into the connection's last response."""

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


def status_for(exc: FramingError) -> Failure:
    if isinstance(exc, FrameTooLarge):
        return Failure(413 if exc.what == "body" else 431, str(exc))
    return Failure(400, str(exc))  # BadMessage


class Connection:
    """One client: a SocketData event, a write queue, a soft timer."""

    __slots__ = (
        "eof",
        "ev",
        "final",
        "framer",
        "grace",
        "head_due",
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

    def __init__(self, server: Any, sock: socket.socket) -> None:
        self.server = server
        self.loop = loop = server._loop
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = HTTPHead(server.max_head, max_body=server.max_body)
        self.out: deque[Any] = deque()  # bytes and FileBody, in order
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
        # the deadline the timer is armed for when it is the request head's
        # (ready_at + header_timeout of the ready period then), else None
        self.head_due: float | None = now + server.header_timeout
        self.timer = loop.call_at(self.head_due, self._on_timer)
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
                self.queue.append(status_for(act.error))  # answered in its turn, last
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
            head_due = self.ready_at + s.header_timeout
            if self.grace or self.head_due == head_due:
                # armed for this ready period's head deadline (however late
                # it fires), or for the grace below: a slowloris
                s.stats["timeouts"] += 1
                self._cut(408)
                return
            if now < head_due:  # armed for an earlier deadline: wait for the head's
                due = head_due
            else:
                # The head's deadline passed while the timer was armed for
                # another (the idle timeout): it cannot tell when the head
                # began, so the head gets header_timeout of its own from now.
                self.grace = True
                due = now + s.header_timeout
        else:  # idle between requests
            due = self.ready_at + s.timeout
            head_due = self.ready_at + s.header_timeout
            if now < head_due:
                due = head_due
        if now >= due:
            s.stats["timeouts"] += 1
            self.close()
            return
        self.head_due = due if due == self.ready_at + s.header_timeout else None
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
            if type(item) is FileBody:
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
            if len(out) > 1 and type(out[1]) is not FileBody:
                # responses queued together leave in one send
                parts = [out.popleft()]
                while out and type(out[0]) is not FileBody:
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
        if type(req) is Failure:
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
        status, real, st = s.files.lookup(req.target)
        if status != 200:
            self._emit(status, req, keep=keep and status != 400)
            return
        if not_modified(req, st.st_mtime):
            self._emit(304, req, keep=keep, length=False,
                       extra=f"Last-Modified: {http_date(st.st_mtime)}\r\n")
            return
        head = req.method == "HEAD"
        if st.st_size < s.sendfile_min:
            entry = s.files.cached(real, st)
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
        self._emit(200, req, keep=keep, ctype=content_type(real), length_value=size,
                   extra=f"Last-Modified: {http_date(st.st_mtime)}\r\n", head_only=True)
        if head or size == 0:
            os.close(fd)
        else:
            self.out.append(FileBody(fd, size))
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
        if body is None and length_value is None and status != 304:
            body = f"{status} {REASONS[status]}\n".encode()
        if req is not None and req.method == "HEAD":
            head_only = True
        size = length_value if length_value is not None else len(body or b"")
        version = "HTTP/1.0" if req is not None and req.version == "HTTP/1.0" else "HTTP/1.1"
        conn = ("Connection: keep-alive\r\n" if version == "HTTP/1.0" else "") if keep \
            else "Connection: close\r\n"
        lines = (
            f"{version} {status} {REASONS[status]}\r\nServer: AEMhttpd\r\n"
            f"Date: {s._clock.date()}\r\n{conn}{extra}"
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
            if type(item) is FileBody:
                item.close()
        self.out.clear()
        self.queue.clear()
        self.sock.close()
        self.sock = None  # type: ignore[assignment]
        s = self.server
        s._conns.discard(self)
        s._check_done()
