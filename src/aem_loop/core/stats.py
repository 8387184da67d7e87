"""Statistics records of the core (frozen, as trio's ``statistics()``)."""

from __future__ import annotations

import dataclasses
from collections import deque

__all__ = ["LatencyRecorder", "LatencySummary", "LoopStatistics", "percentile"]

# Samples kept per priority level for the lateness percentiles.  A bounded
# window keeps memory constant and the figures about recent behaviour.
_WINDOW = 4096


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    """Lateness of dispatched callbacks in seconds (sampled)."""

    samples: int
    p50: float
    p99: float
    max: float


class LatencyRecorder:
    __slots__ = ("_samples", "count")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_WINDOW)
        self.count = 0

    def add(self, value: float) -> None:
        self._samples.append(value)
        self.count += 1

    def summary(self) -> LatencySummary:
        s = sorted(self._samples)
        return LatencySummary(
            samples=self.count,
            p50=percentile(s, 50),
            p99=percentile(s, 99),
            max=s[-1] if s else 0.0,
        )


@dataclasses.dataclass(frozen=True)
class LoopStatistics:
    """What ``loop.statistics()`` returns.

    - ``queued``: ready callbacks waiting now, per priority level.
    - ``dispatched``: callbacks run so far, per priority level.
    - ``lateness``: time from ready (or due, for timers) to run, per level.
    - ``polls``: I/O polls (backend iterations); ``slices``: dispatch rounds
      cut short by the time slice so that I/O could be polled.
    - ``aged``: callbacks run ahead of more urgent ones by aging.
    - ``inherited``: callbacks queued above their own priority by inheritance
      (woken by a more urgent event) or by a boosted lock holder.
    - ``timers_pending``/``timers_fired``; ``timer_wakeups``: polls that fired
      timers; ``timer_wakeups_saved``: further wakeups the fired timers' exact
      deadlines would have needed (timer slack, or timers due close together).
    - ``fast_path``: True until the process first uses a non-default
      priority (and not in debug mode, nor with ``fast_path=False``): on
      the uvloop backend callbacks then bypass the core's queue (uvloop's
      own), on the selector backend the core dispatches its one level
      without looking up levels.
    - ``urgent_signals``: times the kernel signalled urgent I/O ready
      (selector backend, loop in the main thread: a quiet urgent fd is
      signalled instead of asked for at every time slice; docs/design.md).
    """

    backend: str
    queued: dict[int, int]
    dispatched: dict[int, int]
    lateness: dict[int, LatencySummary]
    polls: int
    slices: int
    aged: int
    inherited: int
    fast_path: bool
    timers_pending: int
    timers_fired: int
    timer_wakeups: int
    timer_wakeups_saved: int
    time_slice: float
    aging: float | None
    urgent_signals: int = 0
