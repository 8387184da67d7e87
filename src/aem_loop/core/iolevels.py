"""The levels a scheduler's backend has I/O registered at (methods of
:class:`~aem_loop.core.scheduler.Scheduler`).

A round below a level with I/O watches the clock and, at a spent slice,
asks whether that I/O is ready (the backend's ``io_ready`` / ``io_poll``),
unless the backend has the kernel signal its readiness
(:meth:`io_signalled`): then a signal handler puts ``URGENT_IO`` in the
inbox, which ends the round at its next callback, and rounds below that
level run as if it had no I/O (no clock, no slice).
"""

from __future__ import annotations

from typing import Any

from .priority import NQUEUES

__all__ = ["io_register", "io_signalled", "io_unregister"]


def io_register(self: Any, level: int) -> None:
    """A backend registered an I/O waiter at *level*."""
    counts = self._io_counts
    if counts is None:
        counts = self._io_counts = [0] * NQUEUES
        self._io_bits = 0
    counts[level] += 1
    self._io_bits |= 1 << level
    self._watch_bits = self._io_bits & ~self._sig_bits
    _one_level(self)
    if 1 << level > self.flat_bit:  # above the level of flat rounds
        self.flat_bit = -1


def io_unregister(self: Any, level: int) -> None:
    """A backend removed an I/O waiter at *level*."""
    counts = self._io_counts
    if counts is None or counts[level] <= 0:
        return
    counts[level] -= 1
    if not counts[level]:
        self._io_bits &= ~(1 << level)
        self._watch_bits = self._io_bits & ~self._sig_bits
        _one_level(self)


def _one_level(self: Any) -> None:
    """``_io_one``: the level, if exactly one has registered I/O; else -1."""
    bits = self._io_bits
    self._io_one = bits.bit_length() - 1 if bits and not bits & (bits - 1) else -1


def io_signalled(self: Any, levels: int) -> None:
    """The backend has the kernel signal readiness at these *levels* (a
    bitmap; 0: none): a round needs not watch the clock for their I/O."""
    self.flat_bit = -1  # run_ready decides anew whether a round is flat
    self._sig_bits = levels
    self._watch_bits = self._io_bits & ~levels
