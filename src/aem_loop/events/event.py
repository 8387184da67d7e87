"""Events: AEM's registration of a handler with a priority and flags.

An :class:`Event` is what ``loop.add_event(source, handler, ...)`` returns.
Its source's *job* (see :mod:`aem_loop.events.sources`) runs at job level,
above every handler level: it checks what is ready (reads, frames) and
calls :meth:`Event._occur` for each occurrence.  The first occurrence
queues one activation at the event's priority; every later one merges into
that pending activation (its data appended, ``occurrences`` counted) until
the activation runs.  So a handler never runs more often than the loop can
serve it, and it receives everything that arrived meanwhile, in order.

The activation runs ``constructor()`` (its result is ``act.resource``),
then ``handler(act)``, then ``destructor(act.resource)`` -- also when the
handler raises; an ``async def`` handler runs as a task at the event's
priority and the destructor runs when it ends.  With ``EventFlags.FORK`` or
``EventFlags.CAPSULE`` the handler runs in another process (a
:class:`~aem_loop.ClonerEvent` does the work), with the activation pickled.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

from ..capsules.cloner import ClonerEvent, EventFlags
from ..core.priority import PRIORITY_VAR, check_priority, context_at, current_priority
from ..core.stats import LatencyRecorder, LatencySummary

_NO_FLAGS = EventFlags(0)

__all__ = ["Activation", "Event", "EventStatistics", "current_event"]

_ids = itertools.count(1)
_CLONER_FLAGS = EventFlags.FORK | EventFlags.CAPSULE | EventFlags.NOCLDWAIT | EventFlags.KEEPALIVE

# The event whose handler is running (events registered there are its children).
_CURRENT: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "aem_loop.event", default=None
)


def current_event() -> Event | None:
    """The event whose handler is running now, or None."""
    return _CURRENT.get()


@dataclasses.dataclass(slots=True)
class Activation:
    """What a handler receives: everything merged since the last activation."""

    data: list[Any]  # the occurrences' data in order (messages, signals, triggers, ...)
    occurrences: int  # how many occurrences were merged into this activation
    eof: bool = False  # the source ended: this is the event's last activation
    error: BaseException | None = None  # why the source stopped early (framing, reset)
    event_id: int = 0
    resource: Any = None  # what the event's constructor returned
    priority: int = 0  # the level the handler runs at (raised by a SocketData classifier)

    @property
    def merged(self) -> int:
        """Occurrences beyond the first that this activation stands for."""
        return self.occurrences - 1


@dataclasses.dataclass(frozen=True)
class EventStatistics:
    activations: int
    occurrences: int
    merged: int  # occurrences that joined a pending activation
    errors: int  # handler exceptions
    paused: int  # times the source was paused because the handler fell behind
    lateness: LatencySummary  # first occurrence -> handler start, seconds


class _Pending:
    __slots__ = ("count", "data", "eof", "error", "level", "nbytes", "t")

    def __init__(self, t: float, level: int) -> None:
        self.t = t
        self.level = level
        self.data: list[Any] = []
        self.count = 0
        self.eof = False
        self.error: BaseException | None = None
        self.nbytes = 0


def _check_optional_callable(value: object, name: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")


class Event:
    """A registered event (``loop.add_event``)."""

    def __init__(
        self,
        loop: Any,
        source: Any,
        handler: Callable[..., Any],
        *,
        priority: int | None = None,
        flags: EventFlags = _NO_FLAGS,
        constructor: Callable[[], Any] | None = None,
        destructor: Callable[[Any], Any] | None = None,
        pool: Any = None,
        name: str | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if not isinstance(flags, EventFlags):
            raise TypeError(f"flags must be aem_loop.EventFlags, not {flags!r}")
        _check_optional_callable(constructor, "constructor")
        _check_optional_callable(destructor, "destructor")
        attach = getattr(source, "_aem_attach", None)
        if attach is None:
            raise TypeError(
                f"source must be an aem_loop event source (Readable, Writable, SocketData, "
                f"Signal, ChildExit, UserEvent, Periodic), not {source!r}"
            )
        self._loop = loop
        self.source = source
        self.handler = handler
        self.flags = flags
        self._oneshot = bool(flags & EventFlags.ONESHOT)
        self.priority = current_priority() if priority is None else check_priority(priority)
        self.constructor = constructor
        self.destructor = destructor
        self.id = next(_ids)
        self.name = name or getattr(handler, "__qualname__", None) or repr(handler)
        self._ctx = contextvars.copy_context()
        self._ctx.run(PRIORITY_VAR.set, self.priority)
        self._ctx.run(_CURRENT.set, None)
        self.parent: Event | None = _CURRENT.get()
        self.children: list[Event] = []
        self._cloner: ClonerEvent | None = None
        if flags & _CLONER_FLAGS:
            # ONESHOT is the event's own (it unregisters after one activation)
            self._cloner = ClonerEvent(loop, handler, flags=EventFlags(flags & _CLONER_FLAGS),
                                       pool=pool,
                                       priority=self.priority, name=self.name)
        elif pool is not None:
            raise ValueError("pool= is for EventFlags.CAPSULE events")
        self._pending: _Pending | None = None
        self._handle: Any = None
        self._running = False  # the handler is being called (no activation now)
        self._registered = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.activations = 0
        self.occurrences = 0
        self.merged = 0
        self.errors = 0
        self.paused = 0
        self._lateness = LatencyRecorder()
        self._level_ctx: dict[int, contextvars.Context] = {}
        self._held = False
        self._job: Any = None
        self._job = attach(self)  # may raise: then nothing was registered
        if self.parent is not None:
            self.parent.children.append(self)
        loop._aem_events[self.id] = self

    # -- public --------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def processes(self) -> list[Any]:
        """Processes the FORK/CAPSULE handler ran in (:class:`~aem_loop.ChildProcess`)."""
        return list(self._cloner.children) if self._cloner is not None else []

    def trigger(self, data: Any = None) -> None:
        """Occur now with *data* (``UserEvent`` sources; any thread)."""
        trigger = getattr(self.source, "trigger", None)
        if trigger is None:
            raise TypeError(f"only a UserEvent can be triggered, this event's source is "
                            f"{self.source!r}")
        trigger(data)

    async def wait_idle(self) -> None:
        """Wait until no activation of this event is pending or running
        (``async def`` handlers and FORK/CAPSULE runs included)."""
        while self._pending is not None or self._tasks:
            fut = self._loop.create_future()
            self._idle_waiters.append(fut)
            await fut

    async def wait_unregistered(self) -> None:
        """Wait until the event is unregistered (end of stream, ONESHOT, a
        child's exit, or :meth:`unregister`) and idle."""
        while self._registered or self._pending is not None or self._tasks:
            fut = self._loop.create_future()
            self._idle_waiters.append(fut)
            await fut

    def _check_idle(self) -> None:
        if self._pending is None and not self._tasks and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def unregister(self) -> None:
        """End the registration: the source's job stops serving it, a pending
        activation is dropped.  Idempotent."""
        if not self._registered:
            return
        self._registered = False
        self._loop._aem_events.pop(self.id, None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending = None
        self._check_idle()
        job, self._job = self._job, None
        if job is not None:
            job.detach(self)
        if self._cloner is not None and self._cloner.flags & EventFlags.KEEPALIVE:
            self._spawn(self._cloner.close())

    def pause(self) -> None:
        """Stop the source's job from reading (or watching) for this event
        until :meth:`resume`: what was merged stays pending, and a sender
        meets the kernel's socket buffer.  For fd sources (``Readable``,
        ``Writable``, ``SocketData``); idempotent."""
        if not self._registered:
            return
        hold = getattr(self._job, "hold", None)
        if hold is None:
            raise TypeError(f"only fd sources can be paused, not {self.source!r}")
        if not self._held:
            self._held = True
            hold(self)

    def resume(self) -> None:
        """Undo :meth:`pause`; idempotent."""
        if self._held:
            self._held = False
            if self._job is not None:
                self._job.activated(self)

    def statistics(self) -> EventStatistics:
        return EventStatistics(
            activations=self.activations,
            occurrences=self.occurrences,
            merged=self.merged,
            errors=self.errors,
            paused=self.paused,
            lateness=self._lateness.summary(),
        )

    def __repr__(self) -> str:
        state = "registered" if self._registered else "unregistered"
        return (f"<Event {self.id} {self.name!r} on {self.source!r} priority={self.priority} "
                f"{state} activations={self.activations}>")

    # -- from the source's job (job level) -------------------------------------------

    def _occur(self, items: Any = (), *, nbytes: int = 0, error: BaseException | None = None,
               eof: bool = False, count: int = 1, inline: bool = True,
               level: int | None = None) -> int:
        """Merge an occurrence into the pending activation (queued if none;
        run at once, with *inline*, when nothing at its level or above is
        queued).
        *level* (a classifier's verdict on the data) raises this activation
        above the event's priority; a pending activation moves up to it, the
        data merged before included (their order is kept).
        Returns the bytes now pending for the handler (for flow control)."""
        if not self._registered:
            return 0
        lv = self.priority if level is None or level <= self.priority else level
        p = self._pending
        if p is None:
            p = self._pending = _Pending(time.monotonic(), lv)
            ctx = self._ctx if lv == self.priority else self._context_at(lv)
            sched = self._loop._aem
            if not inline or self._running or sched.queued_above(lv - 1):
                # In its turn: behind what waits at its level, as a stock
                # loop's reader would be (the job ran out of turn, at job level)
                self._handle = self._loop._aem_schedule(self._activate, (), ctx)
            else:
                # Nothing waits at its level or above (no other job either):
                # the activation runs now, without a detour through the queue.
                self._fill(p, items, nbytes, error, eof, count)
                sched.run_direct(lv, ctx.run, self._activate)
                return self._pending_bytes()
        else:
            self.merged += count
            if lv > p.level and self._handle is not None:
                self._handle.cancel()
                p.level = lv
                self._handle = self._loop._aem_schedule(self._activate, (), self._context_at(lv))
        self._fill(p, items, nbytes, error, eof, count)
        return p.nbytes

    def _context_at(self, level: int) -> contextvars.Context:
        return context_at(self._level_ctx, self._ctx, level)

    def _fill(self, p: _Pending, items: Any, nbytes: int,
              error: BaseException | None, eof: bool, count: int) -> None:
        p.count += count
        self.occurrences += count
        if items:
            p.data.extend(items)
        p.nbytes += nbytes
        if error is not None and p.error is None:
            p.error = error
        if eof:
            p.eof = True

    def _pending_bytes(self) -> int:
        p = self._pending
        return p.nbytes if p is not None else 0

    # -- the activation (the event's priority) ----------------------------------------

    def _activate(self) -> None:
        # Runs in the event's own context; no activation runs inline (in that
        # context) while this one is in progress, destructor included.
        self._running = True
        try:
            self._activate_now()
        finally:
            self._running = False
        self._check_idle()

    def _activate_now(self) -> None:
        p = self._pending
        self._pending = None
        self._handle = None
        if p is None or not self._registered:
            return
        self._lateness.add(max(0.0, time.monotonic() - p.t))
        self.activations += 1
        act = Activation(p.data, p.count, p.eof, p.error, self.id, None, p.level)
        if p.eof or self._oneshot:
            self.unregister()
        elif self._job is not None:
            self._job.activated(self)
        _CURRENT.set(self)
        try:
            if self.constructor is not None:
                act.resource = self.constructor()
            if self._cloner is not None:
                self._spawn(self._cloner.activate(dataclasses.replace(act)), act)
                return
            result = self.handler(act)
            if asyncio.iscoroutine(result):
                self._spawn(result, act)
                return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._failed(exc)
        finally:
            _CURRENT.set(None)
        self._destroy(act)

    def _spawn(self, coro: Any, act: Activation | None = None) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._failed(t.exception())  # type: ignore[arg-type]
            if act is not None:
                self._destroy(act)
            self._check_idle()

        task.add_done_callback(done)

    def _destroy(self, act: Activation) -> None:
        if self.destructor is None:
            return
        try:
            self.destructor(act.resource)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._failed(exc, "destructor")

    def _failed(self, exc: BaseException, what: str = "handler") -> None:
        self.errors += 1
        self._loop.call_exception_handler({
            "message": f"Exception in the {what} of event {self.name!r}",
            "exception": exc,
            "event": self,
        })
