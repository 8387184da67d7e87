"""What both backends' loops share: options, timers, tasks, statistics.

A backend loop class is ``class X(AEMLoopMixin, SomeAsyncioLoop)``; this mixin
routes timers and task creation through the core :class:`Scheduler` and
leaves I/O to the loop it is mixed into.  It imports no I/O code.
"""

from __future__ import annotations

import contextvars
import math
import time
from asyncio import coroutines, events
from collections.abc import Callable, Coroutine
from typing import Any

from .priority import PRIORITY_VAR, check_priority
from .scheduler import DEFAULT_AGING, DEFAULT_TIME_SLICE, Scheduler
from .stats import LoopStatistics

__all__ = ["LOOP_OPTIONS", "AEMLoopMixin", "make_scheduler"]

# The options every backend accepts (``new_event_loop(backend=..., **options)``).
LOOP_OPTIONS = ("time_slice", "aging", "strict", "inherit")


def make_scheduler(owner: Any, options: dict[str, Any]) -> Scheduler:
    """Build the core from loop options, rejecting unknown ones by name."""
    unknown = sorted(set(options) - set(LOOP_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown aem_loop option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(LOOP_OPTIONS)}"
        )
    strict = options.get("strict", False)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, not {strict!r}")
    aging = options.get("aging", DEFAULT_AGING)
    if strict:
        if "aging" in options and options["aging"] is not None:
            raise ValueError("strict=True means no aging; do not also pass aging=")
        aging = None
    return Scheduler(
        time_slice=options.get("time_slice", DEFAULT_TIME_SLICE),
        aging=aging,
        inherit=options.get("inherit", True),
        owner=owner,
    )


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

    # The loop's clock.  Both backends use CLOCK_MONOTONIC at full resolution
    # (uvloop's own clock is cached per iteration in milliseconds).
    time = staticmethod(time.monotonic)

    # -- timers --------------------------------------------------------------

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> events.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        timer = self.call_at(time.monotonic() + delay, callback, *args, context=context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        return timer

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> events.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        if isinstance(when, float) and math.isnan(when):
            raise ValueError("when must be a number, not NaN")
        self._aem_check_open()
        if self.get_debug():  # type: ignore[attr-defined]
            self._aem_check_thread()
            check_callback(callback, "call_at")
        timer = events.TimerHandle(when, callback, args, self, context)  # type: ignore[arg-type]
        if timer._source_traceback:
            del timer._source_traceback[-1]
        self._aem.timers.push(timer)
        self._aem_timer_added(timer)
        return timer

    def _timer_handle_cancelled(self, handle: events.TimerHandle) -> None:
        self._aem.timers.cancelled(handle)

    def _aem_timer_added(self, timer: events.TimerHandle) -> None:
        """Hook: a backend whose poll does not ask the core for a timeout re-arms here."""

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
        # The first step of a new task is scheduled with an explicit context
        # but is no wakeup: it must not inherit its creator's level.
        prev = self._aem_creating
        self._aem_creating = True
        try:
            return super().create_task(  # type: ignore[misc]
                coro, name=name, context=context, **kwargs
            )
        finally:
            self._aem_creating = prev

    # -- debug and statistics ---------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)  # type: ignore[misc]
        sched = getattr(self, "_aem", None)
        if sched is not None:
            sched.debug = bool(enabled)

    def statistics(self) -> LoopStatistics:
        """Per-priority queue depth, dispatch counts, lateness; polls, slices."""
        return self._aem.statistics(self._aem_backend)

    @property
    def backend(self) -> str:
        """The name of this loop's I/O backend ("selector" or "uvloop")."""
        return self._aem_backend
