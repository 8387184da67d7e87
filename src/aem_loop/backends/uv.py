"""Backend "uvloop": uvloop's libuv I/O with the AEM core as the scheduler.

libuv runs I/O and calls uvloop's transports, which call protocols directly.
What goes through the core here:

- ``call_soon`` (so every task step and future callback), ``call_later`` /
  ``call_at`` (one libuv timer for the earliest core timer, not one per
  call), ``call_soon_threadsafe`` (so executor results and
  ``run_coroutine_threadsafe``), and ``create_task(priority=)``;
- readers and writers (``add_reader``/``add_writer``): libuv's readiness
  queues the callback, coalesced while queued, at the priority of the
  context that added it (so a reader cannot run again before a callback
  queued ahead of it, such as the future's done callback that removes it);
- protocol callbacks of connections made under a non-default priority
  (:mod:`aem_loop.backends.uvproto`): they run directly when nothing more
  urgent is queued (the fast path), and are queued at their priority
  otherwise.

The core runs as one uvloop handle, ``_aem_dispatch``, re-armed while work
is queued; libuv polls I/O (without blocking, since a handle is ready)
between two rounds, so the time slice bounds urgent latency here too.

Fast path: until the first callback, task, timer or connection at a
non-default priority, ``call_soon``, ``call_soon_threadsafe`` and
``add_reader``/``add_writer`` hand their callbacks straight to uvloop
(there is nothing to order yet), so unmodified programs run at uvloop's
speed.  From the first non-default
priority on, the core dispatches every callback; callbacks already in
uvloop's queue at that moment run first (one round).  ``fast_path=False``
makes the core dispatch everything from the start.

What differs from "selector": uvloop's own internal callbacks (signal
handlers registered with ``add_signal_handler``, connection_made of
default-priority connections, server accept) run directly from libuv
before the core's next round, not in priority order.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from asyncio import events
from collections.abc import Callable
from typing import Any

import uvloop

from ..capsules.cloner import CapsuleLoopMixin
from ..core.handles import AEMHandle
from ..core.loopbase import (
    FAST_HANDLES,
    AEMLoopMixin,
    check_fast_path,
    fast_handle,
    make_scheduler,
)
from ..core.priority import DEFAULT_PRIORITY, PRIORITY_VAR, on_first_priority
from ..events.loop import EventsLoopMixin
from .uvproto import PriorityServerMixin
from .uvsendfile import sendfile_fallback

__all__ = ["UVLoop"]

# The longest the libuv timer is armed for; a later deadline simply re-arms
# when it fires (avoids libuv's uint64 millisecond overflow paths).
_MAX_ARM_SECONDS = 86400.0

_monotonic = time.monotonic
_uv_call_soon = uvloop.Loop.call_soon
_uv_call_later = uvloop.Loop.call_later
_uv_call_soon_threadsafe = uvloop.Loop.call_soon_threadsafe
_uv_add_reader = uvloop.Loop.add_reader
_uv_add_writer = uvloop.Loop.add_writer
_uv_remove_reader = uvloop.Loop.remove_reader
_uv_remove_writer = uvloop.Loop.remove_writer


def _fileno(fd: Any) -> int | None:
    """The fd number of an int or an object with fileno(); None for anything
    else (uvloop then raises its own ValueError for it)."""
    if isinstance(fd, int):
        return fd
    try:
        return int(fd.fileno())
    except (AttributeError, TypeError, ValueError, OSError):
        return None
_INF = math.inf


class UVLoop(PriorityServerMixin, EventsLoopMixin, CapsuleLoopMixin,  # type: ignore[misc]
             AEMLoopMixin, uvloop.Loop):
    """A uvloop loop whose callbacks, tasks and timers run in priority order."""

    _aem_backend = "uvloop"
    _aem_timer_hook = True

    def __init__(self, *, fast_path: bool = True, **options: Any) -> None:
        super().__init__()
        try:
            check_fast_path(fast_path)
            self._aem = make_scheduler(self, options)
        except BaseException:
            # uvloop opened its libuv loop on allocation; only close() frees it.
            uvloop.Loop.close(self)
            raise
        self._aem.debug = self.get_debug()
        self._aem_armed = False
        # The fast path: until the process first uses a non-default priority
        # there is nothing to order, and uvloop's own call_soon is this
        # loop's (an instance attribute, found before the class's method):
        # the futures and tasks of an unmodified program call it with no
        # Python frame of ours in between (a frame that forwards costs ~20%
        # of a streams echo round trip on uvloop).  The first priority
        # (checked in core.priority) ends it for every loop.
        if fast_path and not self.get_debug():
            self._aem_mixed = False
            if type(self).call_soon is UVLoop.call_soon:  # not a subclass's own
                self.__dict__["call_soon"] = _uv_call_soon.__get__(self)
            on_first_priority(self)
        self._aem_closed = False
        self._aem_thread: int | None = None
        self._aem_uv_timer: Any = None
        self._aem_timer_when = _INF
        self._current_handle = None
        # (uvloop's add function, fd) -> the queued handle of a reader/writer
        self._aem_io: dict[tuple[Any, int | None], events.Handle] = {}

    # -- entry points into the core ---------------------------------------------

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> Any:
        if not self._aem_mixed:
            # Fast path: while every callback so far ran at the default
            # priority, there is nothing to order; uvloop's own C queue runs it.
            if context is None:
                level = PRIORITY_VAR.get(DEFAULT_PRIORITY)
            else:
                level = context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
            # Reached through the class only (e.g. super().call_soon): the
            # loop's own attribute is uvloop's method on the fast path.
            if level == DEFAULT_PRIORITY:
                return _uv_call_soon(self, callback, *args, context=context)
            self._aem_leave_fast_path()
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        if self._aem.debug or not FAST_HANDLES:
            handle = AEMHandle(callback, args, self, context)  # type: ignore[arg-type]
            if handle._source_traceback:  # captured in debug mode only
                self._aem_check_thread()
                del handle._source_traceback[-1]
        else:
            handle = fast_handle(self, callback, args, context)
        if context is None or self._aem_creating:
            self._aem.push(handle)
        else:
            self._aem.push_woken(handle)
        if not self._aem_armed:  # _aem_arm(), inlined on this hot path
            self._aem_armed = True
            _uv_call_soon(self, self._aem_dispatch)
        return handle

    def _aem_schedule(self, callback: Callable[..., object], args: tuple[Any, ...],
                      context: contextvars.Context) -> Any:
        """Queue *callback* at the level of *context*, without inheritance
        (the events package activates handlers at their own priority)."""
        self._aem_check_open()
        if not self._aem_mixed:
            if context.get(PRIORITY_VAR, DEFAULT_PRIORITY) == DEFAULT_PRIORITY:
                return _uv_call_soon(self, callback, *args, context=context)
            self._aem_leave_fast_path()
        handle = fast_handle(self, callback, args, context)
        self._aem.push(handle)
        self._aem_arm()
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> Any:
        if not self._aem_mixed:
            ctx = contextvars.copy_context() if context is None else context
            if ctx.get(PRIORITY_VAR, DEFAULT_PRIORITY) == DEFAULT_PRIORITY:
                return _uv_call_soon_threadsafe(self, callback, *args, context=ctx)
            self._aem_leave_fast_path()
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        handle = AEMHandle(callback, args, self, context)  # type: ignore[arg-type]
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._aem.push_threadsafe(handle)
        # uvloop's own thread-safe entry wakes libuv (uv_async_send).
        _uv_call_soon_threadsafe(self, self._aem_dispatch)
        return handle

    # -- readers and writers ---------------------------------------------------------
    #
    # Once the core dispatches (mixed mode), libuv's readiness of an fd only
    # queues its callback, coalesced while queued (Scheduler.push_ready), at
    # the priority of the context that added it.  Run directly by libuv, a
    # reader could fire again between two rounds while the callback that
    # removes it (e.g. a future's done callback) still waits in the queue:
    # stock uvloop runs every ready callback before it polls again.

    def _aem_io_add(self, add: Any, fd: Any, callback: Any, args: tuple[Any, ...]) -> None:
        if not self._aem_mixed:
            add(self, fd, callback, *args)
            return
        self._aem_check_open()
        handle = AEMHandle(callback, args, self, None)
        handle._aem_q = False
        sched = self._aem

        def ready() -> None:
            if not handle._cancelled:
                sched.push_ready(handle)
                self._aem_arm()

        add(self, fd, ready)
        key = (add, _fileno(fd))
        old = self._aem_io.get(key)
        if old is not None:
            old.cancel()
        self._aem_io[key] = handle

    def _aem_io_remove(self, add: Any, remove: Any, fd: Any) -> bool:
        handle = self._aem_io.pop((add, _fileno(fd)), None)
        if handle is not None:
            handle.cancel()  # a queued activation is skipped
        return bool(remove(self, fd))

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._aem_io_add(_uv_add_reader, fd, callback, args)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._aem_io_add(_uv_add_writer, fd, callback, args)

    def remove_reader(self, fd: Any) -> bool:
        return self._aem_io_remove(_uv_add_reader, _uv_remove_reader, fd)

    def remove_writer(self, fd: Any) -> bool:
        return self._aem_io_remove(_uv_add_writer, _uv_remove_writer, fd)

    def _aem_check_open(self) -> None:
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")

    def _aem_check_thread(self) -> None:
        tid = self._aem_thread
        if tid is not None and tid != threading.get_ident():
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other "
                "than the current one"
            )

    # -- dispatch -----------------------------------------------------------------

    def _aem_arm(self) -> None:
        """Have uvloop run the next round (once, however often it is asked)."""
        if not self._aem_armed:
            self._aem_armed = True
            _uv_call_soon(self, self._aem_dispatch)

    def _aem_dispatch(self) -> None:
        self._aem_armed = False
        sched = self._aem
        try:
            if sched.timers.n:
                sched.move_due_timers(_monotonic())
            sched.polls += 1
            sched.run_ready()
        finally:
            if sched._bits or sched.inbox:
                self._aem_arm()
            if sched.timers.n:
                when = sched.timers.next_when()
                if when is not None and when < self._aem_timer_when:
                    self._aem_arm_timer(when)

    # -- timers: one libuv timer for the earliest core timer ---------------------

    def _aem_timer_added(self, timer: events.TimerHandle) -> None:
        if (
            not self._aem_mixed
            and timer._context.get(PRIORITY_VAR, DEFAULT_PRIORITY) != DEFAULT_PRIORITY
        ):
            self._aem_leave_fast_path()
        fire = timer._aem_fire  # type: ignore[attr-defined]
        if fire < self._aem_timer_when:
            self._aem_arm_timer(fire)

    def _aem_arm_timer(self, when: float) -> None:
        if self._aem_uv_timer is not None:
            self._aem_uv_timer.cancel()
        delay = min(max(0.0, when - _monotonic()), _MAX_ARM_SECONDS)
        # libuv counts whole milliseconds; round up so that it never fires
        # before the deadline has (by our clock) a chance to have passed.
        self._aem_uv_timer = _uv_call_later(
            self, math.ceil(delay * 1000.0) / 1000.0, self._aem_on_timer
        )
        self._aem_timer_when = when

    def _aem_on_timer(self) -> None:
        self._aem_uv_timer = None
        self._aem_timer_when = _INF
        sched = self._aem
        sched.move_due_timers(_monotonic())
        if sched._bits:
            self._aem_arm()
        when = sched.timers.next_when()
        if when is not None:
            self._aem_arm_timer(when)

    # -- sendfile: uvloop has none (see uvsendfile) --------------------------

    async def sendfile(
        self,
        transport: Any,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send *file* over *transport* (read + write; libuv has no native path)."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported "
                f"for transport {transport!r}"
            )
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        return await sendfile_fallback(self, transport, file, offset, count)

    # -- lifecycle ------------------------------------------------------------------

    def _aem_leave_fast_path(self) -> None:
        """From now on every callback goes through the core (for good): also
        drops uvloop's call_soon bound on the loop."""
        super()._aem_leave_fast_path()
        self.__dict__.pop("call_soon", None)

    def run_forever(self) -> None:
        self._aem_thread = threading.get_ident()
        try:
            super().run_forever()
        finally:
            self._aem_thread = None

    def close(self) -> None:
        super().close()
        self._aem_closed = True
        self.__dict__.pop("call_soon", None)  # a bound method of the loop: a cycle
        self._aem_uv_timer = None
        self._aem_timer_when = _INF
        self._aem.clear()
