"""Priorities for protocol callbacks on the uvloop backend (the job layer).

uvloop's transports call their protocol straight from libuv.  A connection
made under a non-default priority gets a thin protocol in between that
checks, at each event, whether anything more urgent is queued in the core:

- nothing more urgent and nothing of this connection deferred (the fast
  path): the callback runs at once, marked as running at the connection's
  priority so that what it wakes inherits it;
- otherwise it is queued at the connection's priority behind this
  connection's earlier deferred events, so per-connection order is kept.

Flow control (pause_writing/resume_writing) and BufferedProtocol's
get_buffer/buffer_updated must answer at once and always run directly.
Connections at the default priority get no wrapper at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..core.priority import DEFAULT_PRIORITY, JOB_LEVEL, current_priority
from ..events.classify import CLASSIFIER, ClassifiedProtocol, call_deferred, wrap_factory

__all__ = ["PriorityServerMixin"]


class _PriorityProtocol(asyncio.Protocol):
    def __init__(self, inner: Any, level: int, loop: Any) -> None:
        self._aem_inner = inner
        self._aem_level = level
        self._aem_limit = 2 << level  # the core's bitmap below this: nothing more urgent
        self._aem_loop = loop
        self._aem_sched = loop._aem
        self._aem_backlog = [0]  # events of this connection deferred, not run yet
        self._aem_transport: Any = None
        self._aem_fd: int | None = None  # watched as urgent (see UVLoop._aem_watch)
        if type(self).data_received is _PriorityProtocol.data_received:
            # The path of every message as a closure in the instance (uvloop
            # looks data_received up once per transport): the class's
            # __getattr__ (attributes forwarded to the inner protocol) turns
            # every attribute read on self into the slow generic lookup.
            self.data_received = self._aem_data_received()  # type: ignore[method-assign,assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aem_inner, name)

    def __repr__(self) -> str:
        return f"<aem priority {self._aem_level} protocol for {self._aem_inner!r}>"

    def _aem_direct(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._aem_sched.run_direct(self._aem_level, fn, *args)

    def _aem_call(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self._aem_backlog[0] and self._aem_sched._bits < self._aem_limit:
            self._aem_sched.run_direct(self._aem_level, fn, *args)
            return
        self._aem_defer(fn, args)

    def _aem_defer(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._aem_backlog[0] += 1
        self._aem_loop.call_soon(self._aem_deferred, fn, args)

    def _aem_deferred(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._aem_backlog[0] -= 1
        call_deferred(self._aem_loop, self._aem_transport, self._aem_inner, fn, args)

    def _aem_data_received(self) -> Callable[[bytes], None]:
        """data_received with everything it reads bound: at once, marked as
        running at the connection's level, unless something more urgent is
        queued or an earlier event of this connection waits."""
        backlog = self._aem_backlog
        sched = self._aem_sched
        limit = self._aem_limit
        level = self._aem_level
        inner = self._aem_inner
        defer = self._aem_defer  # a cycle, broken at connection_lost

        def data_received(data: bytes) -> None:
            if not backlog[0] and sched._bits < limit:
                prev = sched.current
                sched.current = level
                try:
                    inner.data_received(data)
                finally:
                    sched.current = prev
            else:
                defer(inner.data_received, (data,))

        return data_received

    # -- protocol interface -------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._aem_transport = transport
        if self._aem_level > DEFAULT_PRIORITY:
            self._aem_fd = self._aem_loop._aem_watch_transport(transport, self._aem_level, self)
        self._aem_direct(self._aem_inner.connection_made, transport)

    def data_received(self, data: bytes) -> None:  # the instance's closure stands for it
        self._aem_call(self._aem_inner.data_received, data)

    def eof_received(self) -> bool | None:
        if not self._aem_backlog[0] and self._aem_sched._bits < self._aem_limit:
            return self._aem_direct(self._aem_inner.eof_received)  # type: ignore[no-any-return]
        self._aem_call(self._aem_inner.eof_received)
        return True  # keep the transport open until the deferred call decides

    def connection_lost(self, exc: Exception | None) -> None:
        self.__dict__.pop("data_received", None)  # its closure refers to self
        if self._aem_fd is not None:
            self._aem_loop._aem_unwatch(self._aem_fd, self)
            self._aem_fd = None
        self._aem_call(self._aem_inner.connection_lost, exc)

    def pause_writing(self) -> None:
        self._aem_direct(self._aem_inner.pause_writing)

    def resume_writing(self) -> None:
        self._aem_direct(self._aem_inner.resume_writing)


class _PriorityBufferedProtocol(_PriorityProtocol, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> Any:
        return self._aem_inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._aem_direct(self._aem_inner.buffer_updated, nbytes)


def _wrap_factory(loop: Any, factory: Callable[[], Any]) -> Callable[[], Any]:
    # A classified connection's every message may be urgent: its fd (and its
    # server's) is watched, at job level (its data is classified there), so
    # that hand-offs go on with checkpoints that ask whether one has data,
    # and a spent slice returns to libuv only when one has.
    if getattr(factory, "_aem_classified", False):  # its protocols are classified already
        loop._aem_note_io(JOB_LEVEL, watched=True)
        return factory
    classifier = CLASSIFIER.get()
    if classifier is not None:  # the classified protocol keeps the connection's level too
        loop._aem_leave_fast_path()
        loop._aem_note_io(JOB_LEVEL, watched=True)
        return wrap_factory(loop, factory, classifier)
    level = current_priority()
    if level == DEFAULT_PRIORITY:
        return factory
    loop._aem_leave_fast_path()
    loop._aem_note_io(level, watched=level > DEFAULT_PRIORITY)

    def make() -> Any:
        inner = factory()
        if isinstance(inner, asyncio.BufferedProtocol):
            return _PriorityBufferedProtocol(inner, level, loop)
        return _PriorityProtocol(inner, level, loop)

    make._aem_level = level  # type: ignore[attr-defined]
    return make


def _server_level(factory: Any) -> int:
    """The level of the connections of a server of *factory* (from
    _wrap_factory): a classified server's every message may be urgent."""
    if getattr(factory, "_aem_classified", False):
        return JOB_LEVEL
    return getattr(factory, "_aem_level", DEFAULT_PRIORITY)  # type: ignore[no-any-return]


def _accepting(loop: Any, factory: Callable[[], Any], level: int) -> Callable[[], Any]:
    """The protocol factory given to uvloop for a server at *level*: above
    the default (or classified), it tells the loop that a connection was
    accepted, so that its connection_made does not wait behind what uvloop's
    queue holds (see UrgentFdsMixin._aem_accepted)."""
    if level <= DEFAULT_PRIORITY:
        return factory
    always = not getattr(factory, "_aem_classified", False)

    def accept() -> Any:
        protocol = factory()
        loop._aem_accepted(always)  # uvloop queues its connection_made next
        return protocol

    return accept


def _watch_server(loop: Any, level: int, server: Any) -> Any:
    """A server whose connections run at *level*: if that is above the
    default, its listening sockets are urgent fds too (a new connection to
    it must not wait behind hand-offs)."""
    if level > DEFAULT_PRIORITY:
        for sock in server.sockets or ():
            loop._aem_watch(sock.fileno(), level, server, listening=True)
    return server


def _unwrap(protocol: Any) -> Any:
    return getattr(protocol, "_aem_inner", protocol) if isinstance(
        protocol, (_PriorityProtocol, ClassifiedProtocol)
    ) else protocol


class PriorityServerMixin:
    """Wraps protocol factories of stream servers and connections."""

    async def create_server(self, protocol_factory: Any, *args: Any, **kw: Any) -> Any:
        factory = _wrap_factory(self, protocol_factory)
        level = _server_level(factory)
        return _watch_server(self, level, await super().create_server(  # type: ignore[misc]
            _accepting(self, factory, level), *args, **kw))

    async def create_unix_server(
        self, protocol_factory: Any, *args: Any, **kw: Any
    ) -> Any:
        factory = _wrap_factory(self, protocol_factory)
        level = _server_level(factory)
        return _watch_server(self, level, await super().create_unix_server(  # type: ignore[misc]
            _accepting(self, factory, level), *args, **kw))

    async def create_connection(
        self, protocol_factory: Any, *args: Any, **kw: Any
    ) -> Any:
        t, p = await super().create_connection(  # type: ignore[misc]
            _wrap_factory(self, protocol_factory), *args, **kw
        )
        return t, _unwrap(p)

    async def create_unix_connection(
        self, protocol_factory: Any, *args: Any, **kw: Any
    ) -> Any:
        t, p = await super().create_unix_connection(  # type: ignore[misc]
            _wrap_factory(self, protocol_factory), *args, **kw
        )
        return t, _unwrap(p)

    async def connect_accepted_socket(
        self, protocol_factory: Any, *args: Any, **kw: Any
    ) -> Any:
        t, p = await super().connect_accepted_socket(  # type: ignore[misc]
            _wrap_factory(self, protocol_factory), *args, **kw
        )
        return t, _unwrap(p)
