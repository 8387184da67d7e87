"""Periodic jobs: AEM's periodic soft timers, as ``loop.call_every``.

A :class:`PeriodicJob` runs its callback at ``start + k * interval`` for
k = 1, 2, ...: the schedule is computed from the start, never from the last
run, so it does not drift.  When the loop could not run a tick in time
(it was busy, or the previous run of a coroutine job had not finished), the
missed-tick policy decides:

- ``"skip"`` (default): run once for the latest due tick, count the others
  as missed;
- ``"coalesce"``: run once and say how many ticks this run stands for
  (the callback receives ``ticks=n`` as a keyword argument);
- ``"burst"``: run once per due tick, back to back, until caught up.

A coroutine function callback runs as a task, one run at a time; a tick that
comes due while the previous run is still going counts as missed (overrun).
An exception goes to the loop's exception handler and the job goes on, unless
it was created with ``stop_on_error=True``.

:class:`Ticker` is the same schedule as an async iterator
(``async for tick in aem_loop.every(0.1): ...``).
"""

from __future__ import annotations

import contextvars
import dataclasses
from asyncio import coroutines, events
from collections.abc import Callable
from typing import Any, NamedTuple

from .priority import PRIORITY_VAR, boolean, check_priority, seconds
from .stats import LatencyRecorder, LatencySummary

__all__ = ["MISSED_POLICIES", "PeriodicJob", "PeriodicStatistics", "Tick", "Ticker"]

MISSED_POLICIES = ("skip", "coalesce", "burst")


# The shortest period call_every accepts (seconds).
MIN_INTERVAL = 1e-6


def check_interval(interval: object) -> float:
    """At least MIN_INTERVAL: below it the tick arithmetic leaves floats
    (5e-324 s: ticks behind overflow) and no loop could keep up anyway."""
    return seconds(interval, "interval", low=MIN_INTERVAL, low_ok=True)


def check_missed(missed: object) -> str:
    if missed not in MISSED_POLICIES:
        raise ValueError(
            f"missed must be one of {', '.join(map(repr, MISSED_POLICIES))}, got {missed!r}"
        )
    return str(missed)


def _job_context(priority: int | None) -> contextvars.Context:
    ctx = contextvars.copy_context()
    if priority is not None:
        ctx.run(PRIORITY_VAR.set, check_priority(priority))
    return ctx


@dataclasses.dataclass(frozen=True)
class PeriodicStatistics:
    """What ``PeriodicJob.statistics()`` returns.

    ``runs``: callback calls (coroutine runs started); ``missed``: ticks that
    got no run of their own (skipped, coalesced into another run, overruns);
    ``lateness``: how long after its tick each run started, in seconds.
    """

    interval: float
    runs: int
    missed: int
    errors: int
    lateness: LatencySummary


class PeriodicJob:
    """A callback run every *interval* seconds on the loop (``loop.call_every``)."""

    def __init__(
        self,
        loop: Any,
        interval: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        priority: int | None = None,
        missed: str = "skip",
        stop_on_error: bool = False,
        start: float | None = None,
    ) -> None:
        self._interval = check_interval(interval)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if coroutines.iscoroutine(callback):
            raise TypeError(
                f"callback must be a coroutine function or a plain callable, "
                f"not a coroutine object ({callback!r}); pass the function"
            )
        self._missed_policy = check_missed(missed)
        boolean(stop_on_error, "stop_on_error")
        self._loop = loop
        self._callback: Callable[..., Any] | None = callback
        self._args = args
        self._is_coro = coroutines.iscoroutinefunction(callback)
        self._stop_on_error = stop_on_error
        self._context = _job_context(priority)
        self._start = loop.time() if start is None else float(start)
        self._k = 1  # next tick to run
        self._timer: events.TimerHandle | None = None
        self._task: Any = None
        self._cancelled = False
        self.runs = 0
        self.missed = 0
        self.errors = 0
        self._lateness = LatencyRecorder()
        self._arm()

    # -- public -------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def missed_policy(self) -> str:
        return self._missed_policy

    def next_due(self) -> float | None:
        """Loop time of the next tick, or None once cancelled."""
        return None if self._cancelled else self._due(self._k)

    def cancel(self) -> None:
        """Stop the job; a coroutine run in progress is cancelled too."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        self._callback = None
        self._args = ()

    def cancelled(self) -> bool:
        return self._cancelled

    def statistics(self) -> PeriodicStatistics:
        return PeriodicStatistics(
            interval=self._interval,
            runs=self.runs,
            missed=self.missed,
            errors=self.errors,
            lateness=self._lateness.summary(),
        )

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"next tick {self._k}"
        return (
            f"<PeriodicJob every {self._interval}s {self._callback!r} "
            f"{self._missed_policy} {state} runs={self.runs} missed={self.missed}>"
        )

    # -- schedule -------------------------------------------------------------------

    def _due(self, k: int) -> float:
        return self._start + k * self._interval

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._due(self._k), self._tick, context=self._context)

    def _tick(self) -> None:
        self._timer = None
        if self._cancelled:
            return
        now = self._loop.time()
        k = self._k
        # How many later ticks are due too (never negative: a timer is never early).
        behind = max(0, int((now - self._due(k)) / self._interval))
        if self._task is not None:  # previous coroutine run still going
            self.missed += 1 + behind
            self._k = k + 1 + behind
            self._arm()
            return
        policy = self._missed_policy
        ticks = 1
        if behind:
            if policy == "skip":
                self.missed += behind
                k += behind
            elif policy == "coalesce":
                self.missed += behind
                ticks += behind
                k += behind
            # burst: run tick k now; tick k+1 is due already, its timer fires next
        self._k = k + 1
        self._lateness.add(now - self._due(k))
        self.runs += 1
        self._arm()
        self._run(ticks)

    def _run(self, ticks: int) -> None:
        callback = self._callback
        assert callback is not None
        try:
            if self._missed_policy == "coalesce":
                result = callback(*self._args, ticks=ticks)
            else:
                result = callback(*self._args)
            if self._is_coro:
                self._task = self._loop.create_task(result)
                self._task.add_done_callback(self._run_done)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._failed(exc)

    def _run_done(self, task: Any) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._loop.call_exception_handler(
            {
                "message": f"Exception in periodic job {self._callback!r}",
                "exception": exc,
                "periodic_job": self,
            }
        )
        if self._stop_on_error:
            self.cancel()


def _wake(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


class Tick(NamedTuple):
    """One iteration of a :class:`Ticker`."""

    number: int  # k: this tick was due at start + k * interval
    due: float  # loop time it was due
    ticks: int  # how many ticks it stands for ("coalesce"; else 1)
    missed: int  # ticks missed so far in total


class Ticker:
    """``async for tick in Ticker(loop, interval)``: the periodic schedule as an iterator.

    The body's run time counts: ticks that came due while it ran are handled
    by the *missed* policy ("skip": the next iteration is the latest due
    tick; "coalesce": one iteration with ``tick.ticks`` = how many;
    "burst": one iteration per tick, back to back).  The waits run at
    *priority*, and the iterating task runs each iteration at that priority
    (inheritance through its wakeup).
    """

    def __init__(
        self,
        loop: Any,
        interval: float,
        *,
        priority: int | None = None,
        missed: str = "skip",
        start: float | None = None,
    ) -> None:
        self._interval = check_interval(interval)
        self._missed_policy = check_missed(missed)
        self._loop = loop
        self._context = _job_context(priority)
        self._start = loop.time() if start is None else float(start)
        self._k = 1
        self.missed = 0
        self._closed = False

    def __aiter__(self) -> Ticker:
        return self

    async def __anext__(self) -> Tick:
        if self._closed:
            raise StopAsyncIteration
        loop = self._loop
        due = self._start + self._k * self._interval
        if loop.time() < due:
            fut = loop.create_future()
            timer = loop.call_at(due, _wake, fut, context=self._context)
            try:
                await fut
            finally:
                timer.cancel()
        now = loop.time()
        k = self._k
        behind = max(0, int((now - (self._start + k * self._interval)) / self._interval))
        ticks = 1
        if behind and self._missed_policy != "burst":
            self.missed += behind
            k += behind
            if self._missed_policy == "coalesce":
                ticks += behind
        self._k = k + 1
        return Tick(k, self._start + k * self._interval, ticks, self.missed)

    def close(self) -> None:
        self._closed = True
