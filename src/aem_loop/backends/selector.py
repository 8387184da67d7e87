"""Backend "selector": asyncio's selector loop with the AEM core as its scheduler.

Transports, servers, SSL, subprocesses and signals are asyncio's own
(``asyncio.SelectorEventLoop``); what changes is the iteration:

- every ready handle (call_soon, task steps, future callbacks, I/O readiness
  of readers and writers, due timers, signal handlers, call_soon_threadsafe)
  enters the core's priority queue at the priority of its context;
- ``_run_once`` polls, queues what became ready, and lets the core dispatch
  one round, which ends early after a time slice so that the next poll
  (non-blocking, since work is pending) notices urgent readiness.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import select
import selectors
import sys
import threading
from asyncio import events, futures
from collections.abc import Callable
from typing import Any

from ..capsules.cloner import CapsuleLoopMixin
from ..core.handles import URGENT_IO, AEMHandle
from ..core.iolevels import JOB_TAIL_SLICES
from ..core.loopbase import FAST_HANDLES, AEMLoopMixin, check_fast_path, fast_handle, make_scheduler
from ..core.priority import (
    DEFAULT_PRIORITY,
    JOB_LEVEL,
    LEVEL_BITS,
    NQUEUES,
    PRIORITY_VAR,
    on_first_priority,
)
from ..core.scheduler import Scheduler, own_handle
from ..events.classify import wrap_factory
from ..events.loop import EventsLoopMixin
from .seltransport import ReadIntoTransport
from .sigio import UrgentSignals
from .tiers import TIERED, UNTIERED, UrgentTiers

__all__ = ["SelectorLoop"]

_Handle = AEMHandle
_DEF = DEFAULT_PRIORITY
_new_handle = object.__new__
_copy_context = contextvars.copy_context
_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE
# As EpollSelector: anything but EPOLLOUT (IN, ERR, HUP) wakes a reader,
# anything but EPOLLIN wakes a writer.
_NOT_EPOLLOUT = ~select.EPOLLOUT
_NOT_EPOLLIN = ~select.EPOLLIN
# The job level's bit in the scheduler's I/O bitmap (SelectorLoop._aem_poll_now).
_JOB_BIT = 1 << JOB_LEVEL

# Python 3.12+ checks that no transport uses the fd when it makes one.
_CHECKS_FD_AT_TRANSPORT = sys.version_info >= (3, 12)

# asyncio never blocks in select() for longer than a day (MAXIMUM_SELECT_TIMEOUT).
_MAXIMUM_SELECT_TIMEOUT = 24 * 3600


class _ReadyView:
    """Stands in for ``BaseEventLoop._ready`` so base-class code that appends
    to it (on any Python version) still goes through the core."""

    __slots__ = ("_sched",)

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched

    def append(self, handle: Any) -> None:
        self._sched.push(own_handle(handle))

    def __len__(self) -> int:
        return len(self._sched)

    def __bool__(self) -> bool:
        return self._sched.has_work()

    def clear(self) -> None:
        self._sched.clear()


def _tier_sync(tiers: UrgentTiers, num: int, data: tuple[Any, Any]) -> None:
    """Keep fd *num*'s place in the urgent tiers (backends.tiers) in step
    with its (reader, writer) handles *data*."""
    r, w = data
    tiers.update(num, None if r is None or r._cancelled else r._aem_level,
                 None if w is None or w._cancelled else w._aem_level)


def _job_reader(callback: Any, args: tuple[Any, ...]) -> bool:
    """Whether *callback* reads a transport whose protocol (or, under SSL,
    whose app protocol) decides priorities from the data, or accepts the
    connections of a server whose protocols do: such a reader runs at job
    level (events.classify)."""
    if args and getattr(args[0], "_aem_classified", False):  # _accept_connection
        return True
    p = getattr(getattr(callback, "__self__", None), "_protocol", None)
    if p is None:
        return False
    return bool(getattr(p, "_aem_job", False)
                or getattr(getattr(p, "_app_protocol", None), "_aem_job", False))


class SelectorLoop(EventsLoopMixin, CapsuleLoopMixin, AEMLoopMixin,  # type: ignore[misc]
                   asyncio.SelectorEventLoop):  # type: ignore[misc]
    """An asyncio loop on ``selectors`` (epoll) with priority-ordered dispatch."""

    _aem_backend = "selector"
    # the urgent tiers (backends.tiers); None until __init__ made them (the
    # base class registers its self-pipe reader before that: default level)
    _aem_tiers: UrgentTiers | None = None
    _aem_epoll = False  # the stdlib's epoll selector (decided in __init__)

    def __init__(self, selector: Any = None, *, fast_path: bool = True,
                 **options: Any) -> None:
        try:
            check_fast_path(fast_path)
            sched = make_scheduler(self, options)
        except BaseException:
            self._closed = True  # nothing was opened; keep __del__ quiet
            raise
        self._aem = sched
        super().__init__(selector)
        self._ready = _ReadyView(sched)  # type: ignore[assignment]
        key = self._aem_key(self._ssock.fileno())  # the self-pipe's reader
        if key is not None and key.data[0] is not None:
            sched.io_wakeup(key.data[0]._aem_level)
        sched.set_debug(self.get_debug())
        # the fused poll serves the stdlib's epoll selector (decided once)
        self._aem_epoll = type(self._selector) is selectors.EpollSelector
        if self._aem_epoll:
            # the epoll object's poll and the selector's map, for the fused poll
            self._aem_ep_poll = self._selector._selector.poll  # type: ignore[attr-defined]
            self._aem_fd_to_key = self._selector._fd_to_key  # type: ignore[attr-defined]
            sched.io_poll = self._aem_poll_now
            tiers = self._aem_tiers = UrgentTiers()
            tiers.signals = UrgentSignals(
                sched, functools.partial(sched.inbox.append, URGENT_IO), tiers.fds,
                lambda on: sched.io_signalled(TIERED if on else 0), self.call_later,
                self._aem_use_signals)
            sched.on_signal = tiers.signals.taken
        # where a socket transport reads what is left after a full 64 KiB read (seltransport)
        self._aem_read_buffer = memoryview(bytearray(ReadIntoTransport.max_size))
        # The fast path: until the process first uses a non-default priority
        # (core.priority tells every loop on it, from any thread) the core
        # queues and dispatches at the one level there is (Scheduler.*_flat).
        if fast_path and not sched.debug:
            self._aem_mixed = False
            on_first_priority(self)
        self._aem_install_call_soon()

    # -- entry points into the core -------------------------------------------

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> events.Handle:
        """As asyncio's.  The loop's own attribute (_aem_install_call_soon)
        is found first outside debug mode; this serves debug mode, a closed
        loop, and a subclass's ``super().call_soon``."""
        if self._debug or not FAST_HANDLES:
            h = super().call_soon(callback, *args, context=context)
            if h._source_traceback:  # type: ignore[attr-defined]
                del h._source_traceback[-1]  # type: ignore[attr-defined]  # this frame
            return h
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = fast_handle(self, callback, args, context)
        if not self._aem_mixed:
            self._aem.push_flat(handle)
        elif context is None or self._aem_creating:
            self._aem.push(handle)
        else:
            self._aem.push_woken(handle)
        return handle  # type: ignore[no-any-return]

    def _aem_install_call_soon(self) -> None:
        """The loop's own ``call_soon`` outside debug mode: a closure (an
        instance attribute, found before the method above) that does what
        the method does with the core's queues in its cells instead of
        behind attribute look-ups, ~20 bytecodes less a callback (each task
        wakeup comes this way).  set_debug drops it (debug mode is the
        method's) or installs it again; close() drops it (it holds the loop)."""
        self.__dict__.pop("call_soon", None)
        self._aem_install_c_methods()
        if (self._debug or not FAST_HANDLES or self._closed
                or type(self).call_soon is not SelectorLoop.call_soon):
            return
        loop = self
        sched = self._aem
        inbox = sched.inbox
        drain = sched.drain_inbox
        levels = sched._levels
        skip = sched._skip
        push = sched.push
        push_woken = sched.push_woken
        var = PRIORITY_VAR
        new, cls, copy, bits = _new_handle, _Handle, _copy_context, LEVEL_BITS

        def call_soon(callback: Callable[..., object], *args: Any,
                      context: Any = None) -> events.Handle:
            if loop._closed:
                raise RuntimeError("Event loop is closed")
            handle: Any = new(cls)  # fast_handle(), inlined
            handle._callback = callback
            handle._args = args
            handle._cancelled = False
            handle._loop = loop
            handle._repr = None
            handle._source_traceback = None
            handle._context = ctx = copy() if context is None else context
            # The core's push, inlined: Scheduler.push_flat on the fast path;
            # with levels in use the level of the handle's context, with
            # Scheduler.push_woken deciding whenever the level could move
            # (inheritance, a boost).
            if inbox:  # what other threads queued earlier goes first
                drain()
            if not loop._aem_mixed:
                level = _DEF
            else:
                level = ctx.get(var, _DEF)
                if sched.boosts or (sched.current > level and context is not None):
                    if context is None or loop._aem_creating:
                        push(handle)
                    else:
                        push_woken(handle)
                    return handle  # type: ignore[no-any-return]
            q = levels[level]
            if not q:  # the bitmap changes only when a level becomes non-empty
                b = sched._bits  # (an empty bitmap: the bit itself, no new int)
                sched._bits = b | bits[level] if b else bits[level]
            q.append(handle)
            c = skip[level] - 1
            skip[level] = c
            if not c:  # a lateness sample starts (Scheduler._enqueue)
                sched._start_probe(handle, level, sched._clock())
            return handle  # type: ignore[no-any-return]

        self.__dict__["call_soon"] = call_soon

    def _aem_install_c_methods(self) -> None:
        """``get_debug`` and ``create_future`` as C callables in the instance
        outside debug mode (as uvloop's are): every Future and Task asks its
        loop get_debug() when it is made, a Python frame each (three per
        aiohttp request), and create_future is a frame around the C Future.
        Installed and dropped with call_soon's closure (set_debug, close)."""
        d = self.__dict__
        d.pop("get_debug", None)
        d.pop("create_future", None)
        if self._debug is not False or self._closed:
            return
        cls = type(self)
        if cls.get_debug is asyncio.BaseEventLoop.get_debug:
            d["get_debug"] = False.__bool__
        if cls.create_future is asyncio.BaseEventLoop.create_future:
            d["create_future"] = functools.partial(futures.Future, loop=self)

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self._aem_install_call_soon()

    def _aem_schedule(self, callback: Callable[..., object], args: tuple[Any, ...],
                      context: contextvars.Context) -> events.Handle:
        """Queue *callback* at the level of *context*, without inheritance
        (the events package activates handlers at their own priority)."""
        self._check_closed()
        handle: Any = fast_handle(self, callback, args, context)
        if not self._aem_mixed:
            self._aem.push_flat(handle)
        else:
            self._aem.push(handle)
        return handle  # type: ignore[no-any-return]

    def _make_socket_transport(self, sock: Any, protocol: Any, waiter: Any = None, *,
                               extra: Any = None, server: Any = None) -> Any:
        if _CHECKS_FD_AT_TRANSPORT:  # as the stock loop of this Python does
            self._ensure_fd_no_transport(sock)
        return ReadIntoTransport(self, sock, protocol, waiter, extra, server)

    async def create_server(self, protocol_factory: Any, *args: Any, **kw: Any) -> Any:
        return await super().create_server(wrap_factory(self, protocol_factory), *args, **kw)

    async def create_unix_server(self, protocol_factory: Any, *args: Any, **kw: Any) -> Any:
        return await super().create_unix_server(
            wrap_factory(self, protocol_factory), *args, **kw
        )

    def _call_soon(
        self, callback: Callable[..., object], args: Any, context: Any
    ) -> events.Handle:
        # Reached through BaseEventLoop.call_soon only in debug mode (or with
        # an unknown Handle layout): call_soon above builds its own otherwise.
        handle = AEMHandle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        if context is None or self._aem_creating:
            self._aem.push(handle)
        else:
            self._aem.push_woken(handle)
        return handle

    def _add_callback(self, handle: events.Handle) -> None:
        # Only _process_events calls this: I/O readiness, coalesced per fd.
        if not handle._cancelled:
            self._aem.push_ready(handle)

    def _add_callback_signalsafe(self, handle: events.Handle) -> None:
        self._aem.push_threadsafe(own_handle(handle))
        self._write_to_self()

    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: Any = None,
    ) -> events.Handle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")  # type: ignore[attr-defined]
        handle = AEMHandle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._aem.push_threadsafe(handle)
        self._write_to_self()
        return handle

    # -- registered I/O levels, so the core knows when a mid-round poll matters

    def _aem_key(self, fd: Any) -> Any:
        """The selector's key of *fd*, or None if it is not registered (as
        ``get_key``; a number is looked up without it: once per registration
        and removal, so once per connection)."""
        sel: Any = self._selector
        if self._aem_epoll and type(fd) is int and fd >= 0:
            return sel._fd_to_key.get(fd)
        return sel.get_map().get(fd)

    def _aem_add_io(self, fd: Any, event: int, callback: Any, args: Any) -> events.Handle:
        """asyncio's _add_reader/_add_writer, with the core's handle (see core.handles)."""
        self._check_closed()
        read = event == _EVENT_READ
        ctx = None
        if read and _job_reader(callback, args):
            ctx = _copy_context()
            ctx.run(PRIORITY_VAR.set, JOB_LEVEL)
            if not self._aem_mixed:  # the fast path's rounds know one level only
                self._aem_leave_fast_path()
        handle = AEMHandle(callback, args, self, ctx)
        handle._aem_q = False
        # its level from now on (Scheduler.push_io), counted at it (io_register)
        level = handle._aem_level = handle._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
        sel: Any = self._selector
        key = self._aem_key(fd)
        if key is None:
            old = None
            data = (handle, None) if read else (None, handle)
            key = sel.register(fd, event, data)
        else:
            reader, writer = key.data
            old = reader if read else writer
            data = (handle, writer) if read else (reader, handle)
            sel.modify(fd, key.events | event, data)
        sched = self._aem
        if old is not None:  # counted at its level until it leaves the key, cancelled or not
            sched.io_unregister(old._aem_level)
            old.cancel()
        sched.io_register(level)
        tiers = self._aem_tiers
        if tiers is not None and (level > DEFAULT_PRIORITY or key.fd in tiers):
            _tier_sync(tiers, key.fd, data)
        return handle

    def _add_reader(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._aem_add_io(fd, _EVENT_READ, callback, args)

    def _add_writer(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._aem_add_io(fd, _EVENT_WRITE, callback, args)

    def _aem_remove_io(self, fd: Any, read: bool) -> bool:
        """asyncio's _remove_reader (*read*) or _remove_writer, with the
        core's I/O levels and the urgent tiers kept in step."""
        if self._closed:  # type: ignore[attr-defined]
            return False
        key = self._aem_key(fd)
        if key is None:
            return False
        sel: Any = self._selector
        reader, writer = key.data
        handle = reader if read else writer
        if handle is not None:  # a handle cancelled in place is still counted
            self._aem.io_unregister(handle._aem_level)
        mask = key.events & ~(_EVENT_READ if read else _EVENT_WRITE)
        if not mask:
            sel.unregister(fd)
            data: tuple[Any, Any] = (None, None)
        else:
            data = (None, writer) if read else (reader, None)
            sel.modify(fd, mask, data)
        tiers = self._aem_tiers
        if tiers is not None and key.fd in tiers:
            _tier_sync(tiers, key.fd, data)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _remove_reader(self, fd: Any) -> bool:
        return self._aem_remove_io(fd, True)

    def _remove_writer(self, fd: Any) -> bool:
        return self._aem_remove_io(fd, False)

    def _aem_check_open(self) -> None:
        self._check_closed()

    def close(self) -> None:
        super().close()
        # drops the instance's call_soon, create_future and get_debug (they
        # hold the loop: cycles); a closed loop gets none of them
        self._aem_install_call_soon()
        self._aem_closed = True
        if self._aem_tiers is not None:
            self._aem_tiers.close()
            self._aem_tiers = None
        # what the core holds of the loop (bound methods, the loop itself):
        # cycles, which would leave a closed loop to the garbage collector
        sched = self._aem
        sched.io_poll = sched.on_signal = sched.owner = None

    def _aem_check_thread(self) -> None:
        self._check_thread()  # type: ignore[attr-defined]

    def _aem_leave_fast_path(self) -> None:
        tid = self._thread_id  # type: ignore[attr-defined]
        if not self._aem_mixed and (tid is None or tid == threading.get_ident()):
            self._aem.end_flat_round()  # the bitmap is the loop thread's to change
        super()._aem_leave_fast_path()

    # -- the iteration ----------------------------------------------------------

    def _aem_poll_epoll(self) -> None:
        """A non-blocking select() and _process_events() in one pass over
        epoll's answer (the mid-round poll; _run_once does the same steps
        inline, with its timeout).

        Same semantics as ``EpollSelector.select`` followed by
        ``_process_events``, without the intermediate list of (key, mask)
        tuples and two calls per ready fd; used when the selector is the
        stdlib's EpollSelector (the default on Linux)."""
        try:
            ready = self._aem_ep_poll(0.0, max(len(self._aem_fd_to_key), 1))
        except InterruptedError:
            return
        if ready:
            self._aem_queue_ready(ready)

    def _aem_queue_ready(self, ready: list[tuple[int, int]]) -> None:
        """Queue the readers and writers of the (fd, epoll events) in *ready*
        (the ones not queued already: Scheduler.push_io)."""
        fd_to_key = self._aem_fd_to_key
        sched = self._aem
        level = sched._io_one if self._aem_mixed else _DEF
        # Every registered reader and writer at one level: appended to its
        # queue in this pass (Scheduler.push_io's steps); else push_io looks
        # each one's level up.
        flat = level >= 0 and not sched.boosts
        if flat:
            if sched.inbox:
                sched.drain_inbox()
            q: Any = sched._levels[level]
        else:
            q = []
        was = len(q)
        for fd, ev in ready:
            key = fd_to_key.get(fd)
            if key is None:
                continue
            reader, writer = key.data
            if ev & _NOT_EPOLLOUT and reader is not None and key.events & _EVENT_READ:
                if reader._cancelled:
                    self._remove_reader(key.fileobj)
                elif not reader._aem_q:
                    reader._aem_q = True
                    q.append(reader)
            if ev & _NOT_EPOLLIN and writer is not None and key.events & _EVENT_WRITE:
                if writer._cancelled:
                    self._remove_writer(key.fileobj)
                elif not writer._aem_q:
                    writer._aem_q = True
                    q.append(writer)
        if len(q) == was:
            return
        if not flat:
            sched.push_io(q)
            return
        if not was:
            b = sched._bits
            sched._bits = b | LEVEL_BITS[level] if b else LEVEL_BITS[level]
        skip = sched._skip
        c = skip[level] - 1
        skip[level] = c
        if not c:  # one lateness sample per poll, as push_io's
            sched._start_probe(q[-1], level, sched._clock())

    def _aem_poll_now(self) -> bool:
        """From inside a round of dispatch, at a spent slice: a non-blocking
        poll if I/O more urgent than the backlog is ready (backends.tiers).
        Whether it polled."""
        sched = self._aem
        n = sched._bits.bit_length()
        above = sched._watch_bits >> n << n  # not the signalled levels (tiers)
        if sched.round_left < JOB_TAIL_SLICES * sched.slice:
            # Classified servers' fds (job level) wait for the poll at the end
            # of a round that ends this soon: asked at every slice, a flood of
            # new connections is taken one or two at a time, which costs a
            # sixth of a server's throughput (docs/design.md, "Classified
            # I/O at spent slices").  Priorities given by the program keep
            # the slice.
            above &= ~_JOB_BIT
            if not above:
                return False
        if above & UNTIERED or above >> NQUEUES:
            self._aem_poll_epoll()
            return True
        tiers: Any = self._aem_tiers
        ready = tiers.ready(above)
        tiers.signals.asked(bool(ready))  # quiet tiers are signalled instead
        if not ready:
            return False
        self._aem_queue_ready(ready)
        return True

    def _run_once(self) -> None:
        sched = self._aem
        if sched._bits or sched.inbox or self._stopping:  # type: ignore[attr-defined]
            timeout = 0.0
        else:
            when = sched.timers.next_when() if sched.timers.n else None
            if when is None:
                timeout = -1.0
            else:
                timeout = min(max(0.0, when - self.time()), _MAXIMUM_SELECT_TIMEOUT)
                if timeout > 0.0:  # epoll counts milliseconds: round up, never wake early
                    timeout = math.ceil(timeout * 1e3) * 1e-3
        sched.signalled = False  # this poll sees what a signal announced
        if self._aem_epoll:
            # _aem_poll_epoll's steps with this timeout: a Python call less per iteration
            try:
                ready = self._aem_ep_poll(timeout, max(len(self._aem_fd_to_key), 1))
            except InterruptedError:
                ready = None
            if ready:
                self._aem_queue_ready(ready)
        else:
            event_list = self._selector.select(None if timeout < 0 else timeout)
            self._process_events(event_list)
            event_list = None  # break cycles when an exception occurs
        sched.polls += 1
        if sched.timers.n:
            sched.move_due_timers(self.time() + self._clock_resolution)  # type: ignore[attr-defined]
        if not self._aem_mixed:
            sched.run_flat()
        elif sched._bits == sched.flat_bit:  # one level, nothing can come above it
            sched.run_flat(sched.flat_bit.bit_length() - 1)
        else:
            sched.run_ready()
