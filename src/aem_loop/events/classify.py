"""Content-classified priority for servers of unmodified asyncio code.

``with aem_loop.classify(fn):`` -- servers created inside wrap each
connection's protocol in a :class:`ClassifiedProtocol`.  Its transport's
reads run at job level (the selector backend queues that reader above every
handler level; on the uvloop backend libuv calls the transport between two
rounds of the core, which is job level there).  Each chunk read is split
into messages (``messages="http"``: HTTP/1.x requests, bodies and chunked
encoding skipped, so every request head of a keep-alive connection is
seen; ``messages="chunk"``: each chunk is one message) and ``fn`` gets each
message's first bytes (for HTTP, the whole head) and returns the priority
of that activation, or None for the connection's own.

The protocol's ``data_received`` then runs at that priority: at once when
nothing more urgent waits (no queue, no extra callback), else queued at it;
a message read ahead of the queue (the selector backend's job level) that
is not urgent waits for its turn at its level, as on a stock loop.
A connection's calls keep their order: a call queued behind an earlier,
less urgent one of the same connection raises it to its own level
(inheritance), and ``eof_received``/``connection_lost`` wait for the data
before them.  What ``data_received`` wakes (a reader task, aiohttp's request
loop) runs that step at the activation's priority by inheritance.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..core.priority import (
    JOB_LEVEL,
    PRIORITY_VAR,
    check_priority,
    context_at,
    current_priority,
)

__all__ = [
    "CLASSIFIER", "ClassifiedProtocol", "HTTPScanner", "call_deferred", "classify", "wrap_factory",
]

# Stop reading a connection while this many bytes wait for its protocol.
HIGH_WATER = 256 * 1024
# A request head longer than this is not scanned further (the server
# protocol refuses it anyway): the rest of the connection keeps its level.
MAX_SCAN_HEAD = 64 * 1024

MESSAGE_KINDS = ("chunk", "http")


class _Classifier:
    __slots__ = ("fn", "messages")

    def __init__(self, fn: Callable[[bytes], int | None], messages: str) -> None:
        self.fn = fn
        self.messages = messages


CLASSIFIER: contextvars.ContextVar[_Classifier | None] = contextvars.ContextVar(
    "aem_loop.classifier", default=None
)


def verdict(fn: Callable[[Any], int | None], message: Any, base: int,
            report: Callable[[BaseException], None]) -> int:
    """The level classifier *fn* gives *message*: its answer checked as a
    priority, *base* for None.  A classifier that raises or answers a bad
    priority is reported (``report(exc)``) and the message keeps *base*."""
    try:
        p = fn(message)
        return base if p is None else check_priority(p, "classifier result")
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        report(exc)
        return base


@contextmanager
def classify(fn: Callable[[bytes], int | None], *, messages: str = "chunk") -> Iterator[None]:
    """Servers created inside decide each activation's priority from its data.

    ``fn(first_bytes)`` returns a priority (0..99) or None (the connection's
    own).  *messages*: ``"chunk"`` (each read is a message) or ``"http"``
    (each HTTP/1.x request head).  Works on both backends, for
    ``loop.create_server``/``create_unix_server`` and ``asyncio.start_server``.
    """
    if not callable(fn):
        raise TypeError(f"classify() needs a callable fn(data) -> priority | None, got {fn!r}")
    if messages not in MESSAGE_KINDS:
        raise ValueError(f"messages must be one of {MESSAGE_KINDS}, got {messages!r}")
    token = CLASSIFIER.set(_Classifier(fn, messages))
    try:
        yield
    finally:
        CLASSIFIER.reset(token)


def wrap_factory(loop: Any, factory: Callable[[], Any],
                 classifier: _Classifier | None = None) -> Callable[[], Any]:
    """*factory*, wrapped when a classifier is in effect (else unchanged).

    The wrapped factory is marked ``_aem_classified``: the selector backend
    accepts its server's connections at job level too (a new connection
    may carry the urgent request).  It makes each protocol in a context at
    the priority current now (the server's), whatever context accepts.
    """
    c = CLASSIFIER.get() if classifier is None else classifier
    classified = bool(getattr(factory, "_aem_classified", False))
    if c is None and not classified:
        return factory
    level = current_priority()

    def build() -> Any:
        if classified:
            return factory()  # its protocols are classified already (aiohttp routes)
        assert c is not None
        return ClassifiedProtocol(factory(), c, loop)

    def make() -> Any:
        ctx = contextvars.copy_context()
        ctx.run(PRIORITY_VAR.set, level)
        return ctx.run(build)

    make._aem_classified = True  # type: ignore[attr-defined]
    return make


# -- HTTP message boundaries ----------------------------------------------------------

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _OPAQUE = range(6)
# Heads that may announce a body (Content-Length, Transfer-Encoding), found
# without splitting the head into lines.
# A head that has neither header has no body (the usual GET): one search.
_FRAMING = re.compile(rb"(?i)\r\n(?:content-length|transfer-encoding)\s*:")


class HTTPScanner:
    """Finds where each HTTP/1.x request starts in a stream, without copying it.

    ``feed(data)`` returns the heads completed by *data*.  Bodies with
    Content-Length or chunked encoding are skipped.  Anything it cannot
    follow (a head over ``MAX_SCAN_HEAD``, a malformed length) makes it stop
    for good: the server protocol refuses such a request itself.
    """

    __slots__ = ("_buf", "_need", "_state")

    def __init__(self) -> None:
        self._state = _HEAD
        self._buf = bytearray()
        self._need = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self._state == _HEAD and not self._buf:
            end = data.find(b"\r\n\r\n")
            if 0 < end == len(data) - 4 and data[0] not in (13, 10):
                self._after_head(data)  # the usual read: one whole head
                return [data]
        heads: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            st = self._state
            if st == _HEAD:
                buf = self._buf
                if not buf:
                    while pos < n and data[pos] in (13, 10):  # CRLFs between requests
                        pos += 1
                    if pos == n:
                        break
                    end = data.find(b"\r\n\r\n", pos)
                    if end >= 0:  # the whole head in this chunk: no copy through buf
                        head = data[pos:end + 4]  # data itself when it is just the head
                        pos = end + 4
                        heads.append(head)
                        self._after_head(head)
                        continue
                start = len(buf)
                buf += data[pos:]
                end = buf.find(b"\r\n\r\n", max(0, start - 3))
                if end < 0:
                    if len(buf) > MAX_SCAN_HEAD:
                        self._state = _OPAQUE
                    break
                head = bytes(buf[:end + 4])
                pos += end + 4 - start
                buf.clear()
                heads.append(head)
                self._after_head(head)
            elif st in (_BODY, _CHUNK_DATA):
                k = min(self._need, n - pos)
                pos += k
                self._need -= k
                if not self._need:
                    self._state = _HEAD if st == _BODY else _CHUNK_SIZE
            elif st in (_CHUNK_SIZE, _TRAILER):
                buf = self._buf
                nl = data.find(b"\n", pos)
                if nl < 0:
                    buf += data[pos:]
                    if len(buf) > MAX_SCAN_HEAD:
                        self._state = _OPAQUE
                    break
                buf += data[pos:nl + 1]
                pos = nl + 1
                line = bytes(buf).strip()
                buf.clear()
                if st == _TRAILER:
                    if not line:
                        self._state = _HEAD
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self._state = _OPAQUE
                    break
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._state = _CHUNK_DATA
                    self._need = size + 2  # the data and its CRLF
            else:  # _OPAQUE
                break
        return heads

    def _after_head(self, head: bytes) -> None:
        if not _FRAMING.search(head):
            self._state = _HEAD  # no body (a GET): the usual case, no header parsing
            return
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    self._state = _OPAQUE
                    return
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self._state = _CHUNK_SIZE
        elif length > 0:
            self._state = _BODY
            self._need = length
        else:
            self._state = _HEAD


# -- the protocol in between -------------------------------------------------------------


def call_deferred(loop: Any, transport: Any, protocol: Any, fn: Callable[..., Any],
                  args: tuple[Any, ...]) -> bool:
    """Call *protocol*'s callback *fn* that was queued instead of run by its
    transport, and do what the transport would have done with its outcome:
    an exception is reported and aborts the connection (False), an
    ``eof_received`` that does not keep the connection open closes it."""
    try:
        result = fn(*args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler({
            "message": f"Fatal error: protocol.{fn.__name__}() call failed.",
            "exception": exc,
            "transport": transport,
            "protocol": protocol,
        })
        if transport is not None:
            transport.abort()
        return False
    if fn.__name__ == "eof_received" and not result and transport:
        transport.close()
    return True


class ClassifiedProtocol(asyncio.Protocol):
    """Runs the inner protocol's callbacks at the priority decided from the data."""

    # The selector backend reads the transport of such a protocol at job level.
    _aem_job = True

    def __init__(self, inner: Any, classifier: _Classifier, loop: Any) -> None:
        self._aem_inner = inner
        self._aem_fn = classifier.fn
        self._aem_scanner = HTTPScanner() if classifier.messages == "http" else None
        self._aem_loop = loop
        self._aem_sched = loop._aem
        base = current_priority()
        self._aem_base = base
        ctx = contextvars.copy_context()
        self._aem_ctxs: dict[int, contextvars.Context] = {base: ctx}
        self._aem_queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._aem_qlevel = -1
        self._aem_qbytes = 0
        self._aem_handle: Any = None
        self._aem_paused = False
        self._aem_transport: Any = None
        self._aem_started: list[Any] = []  # tasks connection_made created
        self._aem_buffered = isinstance(inner, asyncio.BufferedProtocol)
        self._aem_fd: int | None = None  # watched at job level (the uvloop backend)
        if type(self).data_received is ClassifiedProtocol.data_received:
            # The path of every message as a closure in the instance: the
            # class's __getattr__ (attributes forwarded to the inner protocol)
            # turns every attribute read on self into the slow generic lookup.
            self.data_received = self._aem_data_received()  # type: ignore[method-assign,assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aem_inner, name)

    def __repr__(self) -> str:
        return f"<aem classified protocol for {self._aem_inner!r}>"

    # -- levels and contexts

    def _aem_ctx(self, level: int) -> contextvars.Context:
        return context_at(self._aem_ctxs, self._aem_ctxs[self._aem_base], level)

    def _aem_report(self, exc: BaseException) -> None:
        self._aem_loop.call_exception_handler({
            "message": f"classifier {self._aem_fn!r} failed; the message keeps "
                       f"the connection's priority",
            "exception": exc,
            "protocol": self._aem_inner,
        })

    # -- running the inner protocol

    def _aem_direct(self, level: int, fn: Callable[..., Any], *args: Any) -> Any:
        return self._aem_sched.run_direct(level, self._aem_ctx(level).run, fn, *args)

    def _aem_defer(self, level: int, fn: Callable[..., Any], args: tuple[Any, ...],
                   nbytes: int = 0) -> None:
        self._aem_queue.append((fn, args))
        if level > self._aem_qlevel:
            # (re)queue the drain at the more urgent level: what waits before
            # this message on the connection is raised with it
            if self._aem_handle is not None:
                self._aem_handle.cancel()
            self._aem_qlevel = level
            self._aem_handle = self._aem_loop._aem_schedule(
                self._aem_drain, (), self._aem_ctx(level)
            )
        if nbytes:
            self._aem_qbytes += nbytes
            t = self._aem_transport
            if self._aem_qbytes > HIGH_WATER and not self._aem_paused and t is not None:
                self._aem_paused = True
                t.pause_reading()

    def _aem_drain(self) -> None:
        self._aem_handle = None
        self._aem_qlevel = -1
        q = self._aem_queue
        while q:
            fn, args = q.popleft()
            if not call_deferred(self._aem_loop, self._aem_transport, self._aem_inner,
                                 fn, args):
                q.clear()
                return
        self._aem_qbytes = 0
        if self._aem_paused:
            self._aem_paused = False
            t = self._aem_transport
            if t is not None and not t.is_closing():
                t.resume_reading()

    def _aem_feed(self, data: bytes) -> None:
        inner = self._aem_inner
        if not self._aem_buffered:
            inner.data_received(data)
            return
        view = memoryview(data)
        while view:
            buf = inner.get_buffer(len(view))
            n = min(len(buf), len(view))
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            inner.buffer_updated(n)
            view = view[n:]

    # -- protocol interface

    def connection_made(self, transport: Any) -> None:
        self._aem_transport = transport
        loop = self._aem_loop
        watch = getattr(loop, "_aem_watch_transport", None)
        if watch is not None:  # uvloop backend: see backends/uvproto.py
            self._aem_fd = watch(transport, JOB_LEVEL, self)
        prev = loop._aem_collect
        started: list[Any] = []
        loop._aem_collect = started
        try:
            self._aem_direct(self._aem_base, self._aem_inner.connection_made, transport)
        finally:
            loop._aem_collect = prev
        self._aem_started[:] = started

    def _aem_raise_started(self, level: int) -> None:
        """The first message is more urgent than the connection: the tasks
        its connection_made started (e.g. aiohttp's request loop), whose
        first step still waits at the connection's level, take that step at
        the message's level -- a first step is no wakeup, so inheritance
        would not move it."""
        sched = self._aem_sched
        for task in self._aem_started:
            if not task.done():
                sched.boost(task, self, level)  # moves its queued step up
                sched.unboost(task, self)

    def _aem_data_received(self) -> Callable[[bytes], None]:
        """data_received with everything it reads bound (a cycle through
        self, broken at connection_lost).  Each message's level comes from
        the classifier (the body of a request in progress keeps its head's);
        the first message raises the tasks connection_made started.  The
        inner protocol gets the data at once unless earlier calls of this
        connection are queued or a handler more urgent than the message
        waits; when the read ran at job level (the selector backend reads
        ahead of the queue), also unless one as urgent waits: the message is
        then handed over in its turn, behind what was queued before it at
        its level, as a stock loop's reader would run.  (Handed over ahead
        of that work, an aiohttp app under a flood of requests on keep-alive
        connections ran ~10% slower on the selector backend.)  Read from
        uvloop's callbacks (libuv's poll: that turn already), or with
        nothing queued, the data is handed over at once: queueing it would
        cost a callback per message.  So is a first message for the tasks
        connection_made started (aiohttp's request loop), whose first steps
        wait in the queue: behind them, each would take a step more to wait
        for it (one request per connection ran ~3% slower)."""
        sched, inner, base, ctxs = self._aem_sched, self._aem_inner, self._aem_base, self._aem_ctxs
        queued_above, base_ctx, buffered = sched.queued_above, ctxs[base], self._aem_buffered
        scanner, fn, report = self._aem_scanner, self._aem_fn, self._aem_report
        queue, started, raise_started = self._aem_queue, self._aem_started, self._aem_raise_started
        feed, defer = self._aem_feed, self._aem_defer
        cur = base  # the level of the message in progress

        def data_received(data: bytes) -> None:
            nonlocal cur
            heads = (data,) if scanner is None else scanner.feed(data)
            if heads:
                level = -1
                for head in heads:
                    cur = verdict(fn, head, base, report)
                    if cur > level:
                        level = cur
            else:
                level = cur  # the body of the request in progress
            prev = sched.current
            # read at job level (not a first message): behind its own level too
            above = level - 1 if prev == JOB_LEVEL and not started else level
            if started:
                if level > base:
                    raise_started(level)
                started.clear()
            if not queue and not queued_above(above, JOB_LEVEL):
                ctx = base_ctx if level == base else context_at(ctxs, base_ctx, level)
                sched.current = level  # what it wakes inherits the level
                try:
                    ctx.run(feed if buffered else inner.data_received, data)
                finally:
                    sched.current = prev
            else:
                defer(level, feed, (data,), len(data))

        return data_received

    def data_received(self, data: bytes) -> None:  # the instance's closure stands for it
        self._aem_data_received()(data)

    def eof_received(self) -> bool | None:
        # A hand-over like data_received: at once unless earlier calls of
        # this connection or a more urgent handler wait (other connections'
        # reads at job level do not hold it up).
        base = self._aem_base
        if not self._aem_queue and not self._aem_sched.queued_above(base, JOB_LEVEL):
            keep_open = self._aem_direct(base, self._aem_inner.eof_received)
            t = self._aem_transport
            if keep_open or not getattr(t, "_aem_eof_keeps_open", False):
                return keep_open  # type: ignore[no-any-return]
            # The selector backend's socket transport: closed here, where the
            # transport would close it next, but at the connection's level,
            # so its connection_lost is queued in order behind what the
            # protocol queued at that level (not at job level, where it
            # would have to be queued again).  (An SSL transport warns when
            # eof_received returns true: it closes itself.)
            self._aem_ctxs[base].run(t.close)
            return True
        self._aem_defer(base, self._aem_inner.eof_received, ())
        t = self._aem_transport
        if t is not None and t.get_extra_info("sslcontext") is not None:
            # An SSL transport closes after the end of the stream whatever
            # this returns (and warns when it is true); the queued call runs
            # first, connection_lost is queued behind it.
            return None
        return True  # keep the transport open until the queued call decides

    def connection_lost(self, exc: Exception | None) -> None:
        self.__dict__.pop("data_received", None)  # its closure refers to self
        if self._aem_fd is not None:
            self._aem_loop._aem_unwatch(self._aem_fd, self)
            self._aem_fd = None
        # At once, as a stock loop calls it, when nothing the protocol queued
        # before can still wait in the core: the transport calls it from a
        # callback dispatched at the connection's own level (what was queued
        # at that level before ran first: FIFO) with no more urgent handler
        # waiting, or from outside the core's dispatch (uvloop's own
        # callbacks) with nothing queued at or above that level.  Queued at
        # the connection's level otherwise (from a job-level callback: end of
        # file, a read error): the protocol's own work may wait at its level
        # and must run first (aiohttp's request loop, whose first step would
        # otherwise find the connection gone).
        base = self._aem_base
        sched = self._aem_sched
        cur = sched.current
        if not self._aem_queue and (cur == base or cur < 0) and not sched.queued_above(
                base if cur >= 0 else base - 1, JOB_LEVEL):
            self._aem_direct(base, self._aem_inner.connection_lost, exc)
            return
        self._aem_defer(base, self._aem_inner.connection_lost, (exc,))

    def pause_writing(self) -> None:
        self._aem_direct(self._aem_base, self._aem_inner.pause_writing)

    def resume_writing(self) -> None:
        self._aem_direct(self._aem_base, self._aem_inner.resume_writing)


