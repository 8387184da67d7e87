"""The priority ready queue: a bucket queue with a bitmap of non-empty levels.

Like the O(1) scheduler Linux had from 2.6.0 to 2.6.22: one FIFO per level
and a bitmap whose highest set bit names the most urgent non-empty level.
Python ints give us the bitmap for free: ``bits.bit_length() - 1`` is the
top level, found in constant time for our 100 levels.

push and pop are O(1).  Nothing in here knows about I/O, handles or time;
the scheduler decides what the items are and when to age a level.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from .priority import NQUEUES

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """FIFO per priority level; pop returns the oldest item of the top level."""

    # No item count is kept: it would cost every push an update, and the
    # bitmap already says which deques to count (len() is asked once a round).
    __slots__ = ("_bits", "_levels")

    def __init__(self) -> None:
        self._levels: list[deque[Any]] = [deque() for _ in range(NQUEUES)]
        self._bits = 0

    def __len__(self) -> int:
        bits = self._bits
        if not bits & (bits - 1):  # empty, or one level: the usual case
            return len(self._levels[bits.bit_length() - 1]) if bits else 0
        levels = self._levels
        n = 0
        while bits:
            lv = bits.bit_length() - 1
            n += len(levels[lv])
            bits ^= 1 << lv
        return n

    def __bool__(self) -> bool:
        return self._bits != 0

    def push_at(self, item: Any, level: int) -> None:
        self._levels[level].append(item)
        self._bits |= 1 << level

    def top(self) -> int:
        """The most urgent non-empty level, or -1 when empty."""
        return self._bits.bit_length() - 1

    def pop(self) -> tuple[Any, int]:
        """Remove and return (item, level) from the most urgent level."""
        level = self._bits.bit_length() - 1
        if level < 0:
            raise IndexError("pop from an empty ReadyQueue")
        return self.pop_level(level), level

    def pop_level(self, level: int) -> Any:
        """Remove and return the oldest item of *level* (which must be non-empty)."""
        q = self._levels[level]
        item = q.popleft()
        if not q:
            self._bits &= ~(1 << level)
        return item

    def levels_below(self, level: int) -> Iterator[int]:
        """The non-empty levels strictly below *level*, most urgent first."""
        bits = self._bits & ((1 << level) - 1)
        while bits:
            lv = bits.bit_length() - 1
            yield lv
            bits &= ~(1 << lv)

    def depth(self, level: int) -> int:
        return len(self._levels[level])

    def depths(self) -> dict[int, int]:
        """{level: queued items} for the non-empty levels."""
        return {lv: len(q) for lv, q in enumerate(self._levels) if q}

    def clear(self) -> None:
        for q in self._levels:
            q.clear()
        self._bits = 0

    def __iter__(self) -> Iterator[Any]:
        """Items in dispatch order (most urgent level first, FIFO within)."""
        for lv in range(NQUEUES - 1, -1, -1):
            yield from self._levels[lv]
