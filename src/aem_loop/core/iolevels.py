"""The levels a scheduler's backend has I/O registered at (methods of
:class:`~aem_loop.core.scheduler.Scheduler`).

A round below a level with I/O watches the clock and, at a spent slice,
asks whether that I/O is ready (the backend's ``io_ready`` / ``io_poll``),
unless the backend has the kernel signal its readiness
(:meth:`io_signalled`): then a signal handler puts ``URGENT_IO`` in the
inbox, which ends the round at its next callback, and rounds below that
level run as if it had no I/O (no clock, no slice).

Also here: queueing what a poll found ready (:func:`push_io`), each reader
and writer at the level it was registered at.
"""

from __future__ import annotations

from typing import Any

from .priority import DEFAULT_PRIORITY, LEVEL_BITS, NQUEUES

__all__ = [
    "JOB_TAIL_SLICES", "io_register", "io_signalled", "io_unregister", "push_io", "push_io_flat",
]

# A round expected to end within this many time slices (Scheduler.round_left)
# leaves the job level's I/O (classified servers) to the poll at its end: see
# docs/design.md, "Classified I/O at spent slices".
JOB_TAIL_SLICES = 2.5


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


def push_io(self: Any, handles: list[Any]) -> None:
    """``Scheduler.push_ready`` for every handle one poll found ready, in order.

    One call per poll instead of two per ready fd (the per-event cost of
    the loop is a good share of a small round trip).  All of them became
    ready at one moment, so one lateness sample per poll says as much as
    one per handle: the last handle queued is the candidate.  A reader's
    or writer's level is the one it was registered at (``_aem_level``,
    set by the backend, which counts it in :func:`io_register`): while
    every registered waiter is at one level and nothing is boosted, all
    of them go to that level's queue with no per-handle look-up.
    """
    one = self._io_one
    if one >= 0 and not self.boosts:
        push_io_flat(self, handles, one)
        return
    if self.inbox:
        self.drain_inbox()
    levels = self._levels
    bits = self._bits
    boosts = self.boosts
    h: Any = None
    level = -1
    q: Any = None
    for handle in handles:
        if handle._aem_q:
            continue
        handle._aem_q = True
        lv = handle._aem_level
        if boosts:
            lv = self._boosted(handle, lv)
        if lv != level:
            # The fds of one poll are mostly at one level: its queue is looked
            # up (and marked non-empty in the bitmap) when the level changes.
            level = lv
            q = levels[lv]
            if not q:
                bits |= LEVEL_BITS[lv]
        q.append(handle)
        h = handle
    if h is None:
        return
    self._bits = bits
    skip = self._skip
    c = skip[level] - 1
    skip[level] = c
    if not c:
        self._start_probe(h, level, self._clock())


def push_io_flat(self: Any, handles: list[Any], level: int = DEFAULT_PRIORITY) -> None:
    """:func:`push_io` on the fast path (the default level), or when all
    registered I/O is at *level*."""
    if self.inbox:
        self.drain_inbox()
    q = self._levels[level]
    was = len(q)
    for handle in handles:
        if not handle._aem_q:
            handle._aem_q = True
            q.append(handle)
    if len(q) == was:
        return
    if not was:
        self._bits |= LEVEL_BITS[level]
    skip = self._skip
    c = skip[level] - 1
    skip[level] = c
    if not c:
        self._start_probe(q[-1], level, self._clock())
