"""What both backends' loops share: options, timers, tasks, statistics.

A backend loop class is ``class X(AEMLoopMixin, SomeAsyncioLoop)``; this mixin
routes timers and task creation through the core :class:`Scheduler` and
leaves I/O to the loop it is mixed into.  It imports no I/O code.
"""

from __future__ import annotations

import contextvars
import math
import time
from asyncio import BaseEventLoop, coroutines, events, tasks
from collections.abc import Callable, Coroutine
from typing import Any

from .handles import AEMHandle
from .periodic import PeriodicJob
from .priority import DEFAULT_PRIORITY, PRIORITY_VAR, boolean, check_priority, seconds
from .scheduler import DEFAULT_AGING, DEFAULT_TIME_SLICE, Scheduler
from .stats import LoopStatistics
from .timers import AEMTimerHandle, slack_fire_time

_monotonic = time.monotonic
_copy_context = contextvars.copy_context
_new_handle = object.__new__
# The fast handle construction sets every slot of asyncio's TimerHandle; it
# is only used when the slots are the ones it knows (else: regular __init__).
FAST_HANDLES = set(events.Handle.__slots__) | set(events.TimerHandle.__slots__) == {
    "_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr",
    "__weakref__", "_context", "_scheduled", "_when",
}

__all__ = [
    "FAST_HANDLES", "LOOP_OPTIONS", "AEMLoopMixin", "check_fast_path", "fast_handle",
    "make_scheduler",
]


def _fast_timer(loop: Any, when: float, callback: Any, args: tuple[Any, ...],
                context: contextvars.Context | None) -> Any:
    """An AEMTimerHandle with every slot set, without TimerHandle.__init__."""
    h: Any = _new_handle(AEMTimerHandle)
    h._callback = callback
    h._args = args
    h._cancelled = False
    h._loop = loop
    h._repr = None
    h._source_traceback = None
    h._context = _copy_context() if context is None else context
    h._when = when
    h._scheduled = True
    return h

def fast_handle(loop: Any, callback: Any, args: tuple[Any, ...],
                context: contextvars.Context | None) -> Any:
    """An asyncio Handle with every slot set, without Handle.__init__ (which
    costs a get_debug() call): for call_soon outside debug mode."""
    h: Any = _new_handle(AEMHandle)
    h._callback = callback
    h._args = args
    h._cancelled = False
    h._loop = loop
    h._repr = None
    h._source_traceback = None
    h._context = _copy_context() if context is None else context
    return h


# The options every backend accepts (``new_event_loop(backend=..., **options)``).
LOOP_OPTIONS = ("time_slice", "aging", "strict", "inherit", "timer_slack", "urgent_signals")


def check_slack(slack: object) -> float:
    """Validate a timer slack in seconds (a finite number >= 0)."""
    return seconds(slack, "slack", low_ok=True)


def make_scheduler(owner: Any, options: dict[str, Any]) -> Scheduler:
    """Build the core from loop options, rejecting unknown ones by name."""
    unknown = sorted(set(options) - set(LOOP_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown aem_loop option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join((*LOOP_OPTIONS, 'fast_path'))}"
        )
    strict = boolean(options.get("strict", False), "strict")
    aging = options.get("aging", DEFAULT_AGING)
    if strict:
        if "aging" in options and options["aging"] is not None:
            raise ValueError("strict=True means no aging; do not also pass aging=")
        aging = None
    owner._aem_slack = loop_slack(options)
    # quiet urgent fds signalled by the kernel instead of asked (backends.sigio)
    owner._aem_use_signals = boolean(options.get("urgent_signals", True), "urgent_signals")
    # read by every create_task: in the instance (a class attribute read
    # through the instance is an unspecialized lookup on Python 3.11)
    owner._aem_collect = None
    owner._aem_creating = False
    return Scheduler(
        time_slice=options.get("time_slice", DEFAULT_TIME_SLICE),
        aging=aging,
        inherit=options.get("inherit", True),
        owner=owner,
    )


def loop_slack(options: dict[str, Any]) -> float:
    return seconds(options.get("timer_slack", 0.0), "timer_slack", low_ok=True)


def check_fast_path(fast_path: object) -> bool:
    """Validate the loop option fast_path (a bool)."""
    return boolean(fast_path, "fast_path")


def check_callback(callback: object, method: str) -> None:
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(
            f"a callable object was expected by {method}(), got {callback!r}"
        )


class AEMLoopMixin:
    """Timers, tasks and statistics on the core scheduler."""

    _aem: Scheduler
    _aem_backend: str = "?"
    _aem_creating = False  # inside create_task: the next call_soon is a first step
    # While set, create_task appends the tasks it makes (a classified
    # connection learns which tasks its connection_made started).
    _aem_collect: list[Any] | None = None
    _aem_closed = False
    _aem_mixed = True  # False while a backend is on its fast path (no priority used yet)
    # No task factory and no debug mode: create_task makes asyncio Tasks
    # (kept by set_debug, which every loop's __init__ calls, and set_task_factory).
    _aem_plain_tasks = False
    _aem_own_factory = False
    # The create_task this mixin calls is asyncio's BaseEventLoop.create_task
    # (set per class by __init_subclass__) ...
    _aem_stock_create_task = False
    # ... and its tasks are plain: create_task makes them itself (an
    # instance attribute, kept with _aem_plain_tasks).
    _aem_direct_tasks = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The create_task that comes after this mixin's in the class's MRO
        # (what super().create_task would find), for create_task's fast call.
        mro = cls.__mro__
        for base in mro[mro.index(AEMLoopMixin) + 1:]:
            if "create_task" in base.__dict__:
                cls._aem_base_create_task = base.__dict__["create_task"]
                cls._aem_stock_create_task = (
                    base.__dict__["create_task"] is BaseEventLoop.create_task)
                break

    # The loop's clock.  Both backends use CLOCK_MONOTONIC at full resolution
    # (uvloop's own clock is cached per iteration in milliseconds).
    time = staticmethod(time.monotonic)

    # -- timers --------------------------------------------------------------
    #
    # call_later/call_at build the handle without TimerHandle.__init__ (which
    # costs a super() chain and a get_debug() call) when the handle's layout
    # is the one this module knows; debug mode takes the regular path, which
    # records where the timer was created.

    # The backend wants _aem_timer_added (uvloop) for a timer at another
    # level than the default, or due before _aem_timer_when (when the
    # backend's own timer is armed): a default-level timer due later
    # changes nothing there, and is the common one (a timeout per request).
    _aem_timer_hook = False
    _aem_timer_when = math.inf
    _aem_slack = 0.0  # loop option timer_slack

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
        slack: float | None = None,
    ) -> events.TimerHandle:
        """As asyncio's; *slack* (seconds) lets the timer fire up to that late
        so that timers due close together share one wakeup (default: the
        loop's ``timer_slack`` option, 0)."""
        if delay is None:
            raise TypeError("delay must not be None")
        when = _monotonic() + delay
        sched = self._aem
        if not FAST_HANDLES or sched.debug or slack is not None or when != when:
            timer = self.call_at(when, callback, *args, context=context, slack=slack)
            if timer._source_traceback:
                del timer._source_traceback[-1]
            return timer
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        # _fast_timer(self, when, callback, args, context), inlined: a server
        # sets a timer per request, and a call costs ~70 ns here
        h: Any = _new_handle(AEMTimerHandle)
        h._callback = callback
        h._args = args
        h._cancelled = False
        h._loop = self
        h._repr = None
        h._source_traceback = None
        h._context = _copy_context() if context is None else context
        h._when = when
        h._scheduled = True
        slk = self._aem_slack
        fire = slack_fire_time(when, slk) if slk else when
        sched.timers.push(h, fire)
        level = h._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
        if level > sched.timer_top:
            sched.raise_timer_top(level)
        if self._aem_timer_hook and (level != DEFAULT_PRIORITY or fire < self._aem_timer_when):
            self._aem_timer_added(h, level)
        return h

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
        slack: float | None = None,
    ) -> events.TimerHandle:
        """As asyncio's, with *slack* as in :meth:`call_later`."""
        if when is None:
            raise TypeError("when cannot be None")
        if when != when:
            raise ValueError("when must be a number, not NaN")
        slk = self._aem_slack if slack is None else check_slack(slack)
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        sched = self._aem
        if sched.debug or not FAST_HANDLES:
            self._aem_check_thread()
            check_callback(callback, "call_at")
            h: Any = AEMTimerHandle(when, callback, args, self, context)  # type: ignore[arg-type]
            if h._source_traceback:
                del h._source_traceback[-1]
        else:
            h = _fast_timer(self, when, callback, args, context)
        fire = slack_fire_time(when, slk) if slk else when
        sched.timers.push(h, fire)
        level = h._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
        if level > sched.timer_top:
            sched.raise_timer_top(level)
        if self._aem_timer_hook and (level != DEFAULT_PRIORITY or fire < self._aem_timer_when):
            self._aem_timer_added(h, level)
        return h

    def call_every(
        self,
        interval: float,
        callback: Callable[..., object],
        *args: Any,
        priority: int | None = None,
        missed: str = "skip",
        stop_on_error: bool = False,
    ) -> PeriodicJob:
        """Run *callback(*args)* every *interval* seconds, drift-free.

        Returns a :class:`~aem_loop.PeriodicJob` (``cancel()``,
        ``statistics()``).  *missed*: "skip", "coalesce" or "burst"; see
        :mod:`aem_loop.core.periodic`.  *priority*: the level the runs are
        dispatched at (default: the caller's).
        """
        self._aem_check_open()
        return PeriodicJob(
            self, interval, callback, args,
            priority=priority, missed=missed, stop_on_error=stop_on_error,
        )

    def _timer_handle_cancelled(self, handle: events.TimerHandle) -> None:
        # AEMTimerHandle.cancel() leaves the wheel itself; a plain
        # TimerHandle is never scheduled on this loop.
        pass

    def _aem_timer_added(self, timer: events.TimerHandle, level: int) -> None:
        """Hook: a backend whose poll does not ask the core for a timeout
        re-arms here (*level*: the timer's priority)."""

    def _aem_check_open(self) -> None:
        raise NotImplementedError

    def _aem_check_thread(self) -> None:
        raise NotImplementedError

    # -- tasks ---------------------------------------------------------------

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Schedule *coro*; with *priority*, the task runs at that priority.

        Other keyword arguments (Python >= 3.13 passes e.g. ``eager_start``)
        go to the base loop's create_task and task factory unchanged.
        """
        if priority is not None:
            try:
                p = check_priority(priority)
            except (TypeError, ValueError):
                coro.close()  # it can never run; no "never awaited" warning
                raise
            context = contextvars.copy_context() if context is None else context.copy()
            context.run(PRIORITY_VAR.set, p)
        if not kwargs and (self._aem_plain_tasks or not self._aem_mixed):
            # The base loop's create_task alone: on the fast path (no
            # priority used in the process yet) every first step is queued
            # flat, with no level to keep apart; with asyncio's own Task types
            # (no task factory, no debug mode) the first step is the task's
            # own step, which push_woken never takes for a wakeup, so it
            # keeps the task's level without the flag below.
            if name is None and context is None:
                if self._aem_direct_tasks:
                    # asyncio's create_task (Python) without its two frames:
                    # what it does without a task factory or debug mode
                    if self._closed:  # type: ignore[attr-defined]
                        raise RuntimeError("Event loop is closed")
                    task = tasks.Task(coro, loop=self)  # type: ignore[arg-type]
                else:
                    task = self._aem_base_create_task(coro)
            else:
                task = self._aem_base_create_task(coro, name=name, context=context)
            if self._aem_collect is not None:
                self._aem_collect.append(task)
            return task
        # The first step of a new task is scheduled with an explicit context
        # but is no wakeup: it must not inherit its creator's level (a task
        # factory's tasks need not be asyncio Tasks).
        prev = self._aem_creating
        self._aem_creating = True
        try:
            # The base loop's create_task, called without super() and, in
            # the common call (aiohttp's per request), without keywords.
            if kwargs:
                task = self._aem_base_create_task(coro, name=name, context=context, **kwargs)
            elif name is None and context is None:
                task = self._aem_base_create_task(coro)
            else:
                task = self._aem_base_create_task(coro, name=name, context=context)
        finally:
            self._aem_creating = prev
        tb = getattr(task, "_source_traceback", None)
        if tb and tb[-1].filename == __file__:
            del tb[-1]  # debug mode: "created at" names the caller, not this frame
        if self._aem_collect is not None:
            self._aem_collect.append(task)
        return task

    # -- debug and statistics ---------------------------------------------------

    def set_task_factory(self, factory: Any) -> None:
        super().set_task_factory(factory)  # type: ignore[misc]
        self._aem_own_factory = factory is not None
        self._aem_plain_tasks = factory is None and not self.get_debug()  # type: ignore[attr-defined]
        self._aem_direct_tasks = self._aem_plain_tasks and self._aem_stock_create_task

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)  # type: ignore[misc]
        self._aem_plain_tasks = not enabled and not self._aem_own_factory
        self._aem_direct_tasks = self._aem_plain_tasks and self._aem_stock_create_task
        sched = getattr(self, "_aem", None)
        if sched is not None:
            sched.set_debug(bool(enabled))
        if enabled:
            # Debug mode is the core's general path on both backends: its
            # handles record where they were created (trimmed of the core's
            # own frame, as asyncio does) and it times slow callbacks.
            # Called before the core exists too (uvloop's __init__).
            self._aem_leave_fast_path()

    # -- the backends' fast path (until the process first uses a priority) -------

    def _aem_leave_fast_path(self) -> None:
        """From now on the core orders every callback by level (for good).
        May be called from another thread (the first priority set there).
        A backend with more to undo extends it."""
        self._aem_mixed = True

    def _aem_priority_used(self) -> None:  # see core.priority.on_first_priority
        self._aem_leave_fast_path()

    def statistics(self) -> LoopStatistics:
        """Per-priority queue depth, dispatch counts, lateness; polls, slices."""
        return self._aem.statistics(self._aem_backend, fast_path=not self._aem_mixed)

    @property
    def backend(self) -> str:
        """The name of this loop's I/O backend ("selector" or "uvloop")."""
        return self._aem_backend
