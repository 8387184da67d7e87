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

from .priority import LEVEL_BITS, NQUEUES

__all__ = [
    "JOB_TAIL_SLICES", "io_register", "io_signalled", "io_unregister", "io_wakeup", "push_io",
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
    elif level == self._io_pipe:  # the wakeup reader may be left alone there
        _one_level(self)


def io_wakeup(self: Any, level: int) -> None:
    """The backend's own wakeup reader (its self-pipe) is registered at
    *level*.  It is counted there as any reader (a round below that level
    still asks for it at a spent slice), but not when :func:`push_io`
    decides whether one level holds all registered I/O: its callback only
    drains the pipe, and what it hands in (a signal's callback) goes
    through the inbox at its own level, so it may run at any level.  A
    server under one priority (its listener and connections above the
    pipe's level) then has its readers queued without a per-handle look-up."""
    self._io_pipe = level
    _one_level(self)


def _one_level(self: Any) -> None:
    """``_io_one``: the level, if exactly one has registered I/O (the
    wakeup reader aside, see :func:`io_wakeup`); else -1."""
    bits = self._io_bits
    pipe = self._io_pipe
    if pipe >= 0 and bits & ~(1 << pipe) and self._io_counts[pipe] == 1:
        bits &= ~(1 << pipe)  # the pipe alone at its level, other I/O elsewhere
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
    the loop is a good share of a small round trip).  The caller has left
    out the handles queued already (still waiting from an earlier poll:
    a level-triggered fd is reported again) and marked the others queued
    (``_aem_q``, cleared when one is dispatched).  All of them became
    ready at one moment, so one lateness sample per poll says as much as
    one per handle: the last handle queued is the candidate.  A reader's
    or writer's level is the one it was registered at (``_aem_level``,
    set by the backend, which counts it in :func:`io_register`).  While
    every registered waiter is at one level (``_io_one``) and nothing is
    boosted, a backend may append them to that level's queue itself, as
    the selector backend does in its pass over the poll's answer.
    """
    if self.inbox:
        self.drain_inbox()
    levels = self._levels
    bits = self._bits
    boosts = self.boosts
    h: Any = None
    level = -1
    q: Any = None
    for handle in handles:
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
