"""Pending timers of the core.

This is a binary heap ordered by (when, sequence) — asyncio's own structure,
kept behind a small interface so that the timer wheel (issue 3) can replace
it without touching the scheduler or the backends.  Cancelled timers are
removed lazily from the head and the heap is compacted when they become the
majority, as CPython does.
"""

from __future__ import annotations

import heapq
from asyncio import TimerHandle
from collections.abc import Iterator

__all__ = ["TimerQueue"]

# Compact the heap only past this many entries, so that small loops never
# pay for a rebuild (CPython uses the same bound: _MIN_SCHEDULED_TIMER_HANDLES).
_MIN_COMPACT_SIZE = 100
# ...and only when more than this fraction of entries are cancelled, so a
# rebuild (O(n)) is paid for by at least n/2 cancellations (amortised O(1)).
_MIN_CANCELLED_FRACTION = 0.5


class TimerQueue:
    __slots__ = ("_cancelled", "_heap")

    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._cancelled = 0

    def __len__(self) -> int:
        """Live (not cancelled) pending timers."""
        return len(self._heap) - self._cancelled

    def push(self, handle: TimerHandle) -> None:
        heapq.heappush(self._heap, handle)
        handle._scheduled = True  # type: ignore[attr-defined]

    def cancelled(self, handle: TimerHandle) -> None:
        """Called by ``TimerHandle.cancel()`` through the loop."""
        if not handle._scheduled:  # type: ignore[attr-defined]
            return
        self._cancelled += 1
        n = len(self._heap)
        if n > _MIN_COMPACT_SIZE and self._cancelled > n * _MIN_CANCELLED_FRACTION:
            # TimerHandle.cancel() calls us before it marks itself cancelled.
            live = []
            for h in self._heap:
                if h._cancelled or h is handle:  # type: ignore[attr-defined]
                    h._scheduled = False  # type: ignore[attr-defined]
                else:
                    live.append(h)
            heapq.heapify(live)
            self._heap = live
            self._cancelled = 0

    def next_when(self) -> float | None:
        """Deadline of the earliest live timer, or None."""
        heap = self._heap
        while heap and heap[0]._cancelled:  # type: ignore[attr-defined]
            h = heapq.heappop(heap)
            h._scheduled = False  # type: ignore[attr-defined]
            self._cancelled -= 1
        return heap[0]._when if heap else None  # type: ignore[attr-defined]

    def pop_due(self, end: float) -> Iterator[TimerHandle]:
        """Remove and yield the live timers due strictly before *end*, in order."""
        heap = self._heap
        while heap and heap[0]._when < end:  # type: ignore[attr-defined]
            h = heapq.heappop(heap)
            h._scheduled = False  # type: ignore[attr-defined]
            if h._cancelled:  # type: ignore[attr-defined]
                self._cancelled -= 1
                continue
            yield h

    def clear(self) -> None:
        for h in self._heap:
            h._scheduled = False  # type: ignore[attr-defined]
        self._heap.clear()
        self._cancelled = 0
