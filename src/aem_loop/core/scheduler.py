"""The scheduling core: priority ready queue, timers, aging, inheritance, dispatch.

This module imports no I/O code.  A backend owns the poll; it hands ready
handles to :meth:`Scheduler.push` (or :meth:`Scheduler.push_threadsafe` from
other threads and signal handlers), moves due timers with
:meth:`Scheduler.move_due_timers`, and calls :meth:`Scheduler.run_ready`, the
only place where callbacks are called.

Dispatch in one round
---------------------
``run_ready`` runs at most the number of callbacks that were ready when the
round began (asyncio's rule: what a callback schedules runs after the next
poll), always taking the most urgent one next, FIFO within a level.  With
every callback at one priority this is exactly asyncio's order.  A round also
ends when its time slice is spent, so that the backend polls I/O without
blocking and urgent readiness that arrived meanwhile is queued before the
rest of the backlog runs: the latency of urgent work is bounded by one slice
plus one callback, not by the backlog.

Aging
-----
Strict priority starves: as long as urgent work keeps coming, a lower level
never runs.  With ``aging`` set, a non-empty level that has not been served
for ``aging`` seconds gets its oldest callback run at the start of the next
round, ahead of more urgent work.  So every level progresses at a rate of at
least one callback per ``aging`` seconds, and urgent work is delayed by at
most one such callback per starving level per ``aging`` seconds.
``aging=None`` is strict (GLib-style) priority.

Inheritance
-----------
A wakeup -- a callback scheduled with an explicit context, which is how
futures call back the tasks waiting on them -- queued while the core
dispatches level P is queued at max(P, its own priority): the task woken by
an urgent event runs that step at the event's priority (AEM's dynamic soft
real-time value).  Plain ``call_soon`` and the first step of a new task keep
their own priority.  Lock holders can
also be boosted explicitly (:meth:`boost`), see :class:`aem_loop.Lock`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import boosting, iolevels
from .handles import URGENT_IO, AEMHandle, is_wakeup, report_callback_error
from .priority import (
    ABOVE_BITS,
    CLEAR_BITS,
    DEFAULT_PRIORITY,
    LEVEL_BITS,
    NQUEUES,
    PRIORITY_VAR,
    boolean,
    seconds,
)
from .readyqueue import ReadyQueue
from .stats import LatencyRecorder, LoopStatistics
from .timers import AEMTimerHandle, TimerWheel

__all__ = ["DEFAULT_AGING", "DEFAULT_TIME_SLICE", "Scheduler"]

# A round of dispatch polls I/O again after this long.  Far below a
# millisecond so an urgent callback waits at most ~one slice behind a
# backlog; far above the ~1-2 us a non-blocking epoll_wait costs, so the
# extra polls are noise in throughput (<1%).
DEFAULT_TIME_SLICE = 0.0002

# A starving level gets one callback after this long.  10 ms keeps the
# cost for urgent work to one low callback per 10 ms per starving level,
# while a saturated loop still lets every level make ~100 steps a second.
DEFAULT_AGING = 0.010

_NOT_DISPATCHING = -1
_BIT = LEVEL_BITS
_ABOVE = ABOVE_BITS
_CLEAR = CLEAR_BITS
_BELOW = tuple(b - 1 for b in LEVEL_BITS)  # every bit below the level's
_INF = float("inf")
# _io_bits while the backend has not said which levels have I/O: above all.
_IO_UNKNOWN = 1 << NQUEUES
# The default level, its bit, and every bit up to it (the fast path's).
_DEF = DEFAULT_PRIORITY
_DEF_BIT = 1 << _DEF

# Lateness is sampled, not measured for every callback: a probe starts at one
# in this many pushes to a level with no probe in flight (counted per level,
# so a quiet level is sampled from its first callback on).  Measuring every
# round cost ~1 us per round on a 2-core VM (two clock reads and a record),
# the price of a whole callback; one in 8 keeps that under 0.15 us while a
# level that sees 1000 callbacks/s still yields >100 samples a second.
_SAMPLE_EVERY = 8
# The countdown of a level with a probe in flight: it never reaches 0 before
# the probe is dispatched (or cancelled) and the countdown starts again.
_IN_FLIGHT = 1 << 62



def foreign_handle(handle: Any) -> AEMHandle:
    """An AEMHandle that runs *handle*, one the core did not make (e.g. a
    Handle of a class with its own ``_run``, queued by base-class code): the
    dispatch loop calls an AEMHandle's callback itself, not ``_run``, and
    marks it (see core.handles).  It is queued at the priority of *handle*'s
    context (a copy: the inner ``_run`` enters the original)."""
    return AEMHandle(run_handed_off, (handle,), handle._loop, handle._context.copy())


def own_handle(handle: Any) -> Any:
    """*handle* if the core made it, else :func:`foreign_handle` of it."""
    cls = type(handle)
    return handle if cls is AEMHandle or cls is AEMTimerHandle else foreign_handle(handle)


def run_handed_off(handle: Any) -> None:
    """Run *handle* (unless cancelled) from another queue than the one it
    was made for: a foreign handle's from the core's (see foreign_handle)."""
    if not handle._cancelled:
        handle._run()


class Scheduler(ReadyQueue):
    __slots__ = (
        "_boost_sources",
        "_clock",
        "_flat_q",
        "_io_bits",
        "_io_counts",
        "_io_one",
        "_io_pipe",
        "_probe",
        "_probe_t",
        "_sig_bits",
        "_since",
        "_skip",
        "_watch_bits",
        "aged",
        "aging",
        "boosts",
        "current",
        "debug",
        "dispatched",
        "flat_bit",
        "inbox",
        "inherit",
        "inherited",
        "io_poll",
        "io_ready",
        "lateness",
        "on_signal",
        "owner",
        "polls",
        "round_left",
        "signalled",
        "signals",
        "slice",
        "slices",
        "timer_top",
        "timers",
    )

    def __init__(
        self,
        *,
        time_slice: float = DEFAULT_TIME_SLICE,
        aging: float | None = DEFAULT_AGING,
        inherit: bool = True,
        clock: Callable[[], float] = time.monotonic,
        owner: Any = None,
    ) -> None:
        super().__init__()
        self.slice = seconds(time_slice, "time_slice")
        self.aging = None if aging is None else seconds(aging, "aging (or None: strict)")
        self.inherit = boolean(inherit, "inherit")
        self._clock = clock
        self.owner = owner  # gets ``_current_handle`` in debug mode, as asyncio
        self.timers = TimerWheel(clock)
        # No pending timer runs above this level (the loop raises it as
        # timers are set; it drops back when none is pending): only a timer
        # above the level a round runs can bring it more urgent work by time.
        self.timer_top = -1
        self._flat_q = self._levels[DEFAULT_PRIORITY]  # the fast path's level
        # Entry for other threads and signal handlers: deque.append is
        # atomic, the bucket bitmap update is not.
        self.inbox: deque[Any] = deque()
        # Registered I/O waiters per level (maintained by the backend), and
        # the bitmap of levels that have some.  Until the backend registers
        # one it cannot say: a bit above every level makes each share watch
        # the clock and each spent slice end in a poll.
        self._io_counts: list[int] | None = None
        self._io_bits = _IO_UNKNOWN
        # The one level with registered I/O, or -1 (none, several, unknown):
        # the backend's poll may then queue every ready handle there without
        # looking (iolevels.push_io).
        self._io_one = -1
        self._io_pipe = -1  # the level of the backend's wakeup reader (iolevels.io_wakeup)
        # Of those, the levels whose readiness the kernel signals (the
        # backend's io_signalled; backends.tiers), and the rest: the levels
        # a round watches the clock for and a spent slice asks.
        self._sig_bits = 0
        self._watch_bits = _IO_UNKNOWN
        # URGENT_IO came through the inbox: the round ends and the backend polls.
        self.signalled = False
        self.on_signal: Callable[[], None] | None = None
        # A backend that can poll I/O from inside a round (without blocking,
        # queueing what is ready; it returns whether it polled) sets this;
        # else a spent slice with urgent I/O possible ends the round and the
        # backend polls.
        self.io_poll: Callable[[], bool] | None = None
        # A backend that can tell cheaply whether I/O above a level is ready
        # sets this: at a spent slice, False lets the round go on unpolled.
        self.io_ready: Callable[[int], bool] | None = None
        self.current = _NOT_DISPATCHING
        # A round whose queue is one level alone may be run_flat() at that
        # level without asking run_ready when _bits equals this: run_ready sets
        # it when it found no I/O or timer that can bring work above the level,
        # no boost and no debug mode; whatever changes one of those resets it
        # to -1 (matches no bitmap), and the next run_ready looks again.
        self.flat_bit = -1
        self.boosts: dict[Any, int] = {}
        self._boost_sources: dict[Any, dict[Any, int]] = {}
        self.debug = False
        # statistics
        self.dispatched = [0] * NQUEUES
        self.lateness: dict[int, LatencyRecorder] = {}
        self._probe: list[Any] = [None] * NQUEUES
        self._probe_t = [0.0] * NQUEUES
        self._since = [0.0] * NQUEUES
        # Per level: pushes until the next probe starts (the first push
        # always samples); _IN_FLIGHT while one is queued.
        self._skip = [1] * NQUEUES
        self.polls = 0
        self.slices = 0
        self.round_left = _INF  # at the last spent slice: the round's time left, estimated
        self.signals = 0
        self.aged = 0
        self.inherited = 0

    # -- entry -------------------------------------------------------------

    def push(self, handle: Any) -> None:
        """Queue a ready handle at the priority of its context."""
        if self.inbox:  # what other threads queued earlier goes first
            self.drain_inbox()
        level = handle._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
        if self.boosts:
            level = self._boosted(handle, level)
        # _enqueue(handle, level), inlined: this is the path of every
        # call_soon and every I/O event, and a call costs ~0.1 us here.
        q = self._levels[level]
        if not q:  # the bitmap changes only when a level becomes non-empty
            b = self._bits  # (an empty bitmap: the bit itself, no new int)
            self._bits = b | _BIT[level] if b else _BIT[level]
        q.append(handle)
        skip = self._skip
        c = skip[level] - 1
        skip[level] = c
        if not c:
            self._start_probe(handle, level, self._clock())

    def _enqueue(self, handle: Any, level: int, ready_at: float | None = None) -> None:
        """Append *handle* to *level*; *ready_at* (default: now) starts a sample."""
        q = self._levels[level]
        if not q:
            b = self._bits
            self._bits = b | _BIT[level] if b else _BIT[level]
        q.append(handle)
        skip = self._skip
        c = skip[level] - 1
        skip[level] = c
        if not c:
            self._start_probe(handle, level, self._clock() if ready_at is None else ready_at)

    def _start_probe(self, handle: Any, level: int, ready_at: float) -> None:
        self._skip[level] = _IN_FLIGHT
        self._probe[level] = handle
        self._probe_t[level] = ready_at

    def push_woken(self, handle: Any) -> None:
        """Queue a wakeup (a future's callback, run in its waiter's context).

        It runs at max(its own priority, the level being dispatched): the
        task woken by an urgent event runs that step at the event's priority.
        """
        if self.inbox:
            self.drain_inbox()
        level = handle._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
        cur = self.current
        if cur > level and self.inherit and is_wakeup(handle._callback):
            level = cur
            self.inherited += 1
        if self.boosts:
            level = self._boosted(handle, level)
        # _enqueue(handle, level), inlined as in push(): every future
        # callback (each task wakeup) comes this way.
        q = self._levels[level]
        if not q:
            b = self._bits
            self._bits = b | _BIT[level] if b else _BIT[level]
        q.append(handle)
        skip = self._skip
        c = skip[level] - 1
        skip[level] = c
        if not c:
            self._start_probe(handle, level, self._clock())

    def push_ready(self, handle: Any) -> None:
        """Queue an I/O readiness handle once: while it waits in the queue,
        further readiness of the same fd coalesces into that one activation
        (a poll after a time slice sees level-triggered fds ready again)."""
        if handle._aem_q:
            return
        handle._aem_q = True
        self.push(handle)

    # -- one level: while the process has used no other priority ---------------
    #
    # Until a non-default priority is first checked (core.priority), every
    # context is at the default level: there is no level to look up, no
    # boost or inheritance that could move a handle, no aging between levels
    # and no more urgent I/O a time slice would poll for.  A backend on its
    # fast path queues and dispatches with these (the same queue, bitmap and
    # lateness probe as the methods above, so leaving the fast path, from any
    # thread, needs no hand-over): a round then costs about what asyncio's
    # _run_once does, where the general path pays for the levels (~200 more
    # bytecodes a round).

    def push_flat(self, handle: Any) -> None:
        """:meth:`push` (and :meth:`push_woken`) on the fast path."""
        if self.inbox:
            self.drain_inbox()
        q = self._flat_q
        if not q:
            b = self._bits
            self._bits = b | _DEF_BIT if b else _DEF_BIT
        q.append(handle)
        skip = self._skip
        c = skip[_DEF] - 1
        skip[_DEF] = c
        if not c:
            self._start_probe(handle, _DEF, self._clock())

    def end_flat_round(self) -> None:
        """The fast path ends (in the loop's thread): a :meth:`run_flat`
        round in progress stops at its next callback, so that what the
        first priority brought (an urgent callback or timer) runs before the
        rest of it, in :meth:`run_ready`'s order.  It sets the bit of the
        job level, which names no queued callback: run_ready clears it."""
        self._bits |= _BIT[NQUEUES - 1]

    def raise_timer_top(self, level: int) -> None:
        """A timer at *level*, above every pending one, was set.  If a round
        runs below it (that watches the clock only for what is above it),
        its share ends at the next callback, as :meth:`end_flat_round`: the
        round goes on with a share that watches the clock for the timer."""
        self.timer_top = level
        if _BIT[level] > self.flat_bit:  # above the level of flat rounds
            self.flat_bit = -1
        if 0 <= self.current < level:
            self._bits |= _BIT[NQUEUES - 1]

    def run_flat(self, level: int = _DEF) -> None:
        """A round at one level: asyncio's round (what is ready when it
        begins, FIFO), with the lateness probe and counts kept.  The selector
        backend's fast path (the default level), and :meth:`run_ready` when
        one level is queued and nothing (I/O, a timer) can bring more urgent
        work by time: no shares, no slice clock.  Work a callback (or another
        thread) queues above *level* ends the round; it runs next."""
        if self.inbox:
            self.drain_inbox()
        bit = _BIT[level]  # the bitmaps below are made once (core.priority)
        if self._bits != bit:
            # empty, or work was queued at another level meanwhile
            if self._bits:
                self.run_ready()
            return
        q = self._levels[level]
        p = self._probe[level]
        popped = skipped = 0
        above = _ABOVE[level]
        self.current = level
        try:
            for popped in range(1, len(q) + 1):
                try:
                    handle = q.popleft()
                except IndexError:  # a boost moved its handles away
                    popped -= 1
                    break
                handle._aem_q = False
                if handle._cancelled:
                    skipped += 1
                else:
                    # run_ready's call, repeated on purpose: a shared helper
                    # would be one more Python frame per callback
                    args = handle._args
                    try:
                        if not args:
                            handle._context.run(handle._callback)
                        elif len(args) == 1:
                            handle._context.run(handle._callback, args[0])
                        else:
                            handle._context.run(handle._callback, *args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        report_callback_error(handle, exc)
                if handle is p:
                    p = None
                    if handle._cancelled:
                        self._end_probe(level)
                    else:
                        self._sample(level, self._clock())
                if self._bits >= above:
                    break  # more urgent work (or the first other priority used)
                if self.inbox:
                    self.drain_inbox()
                    if self._bits >= above:
                        break
        finally:
            self.current = _NOT_DISPATCHING
            self.dispatched[level] += popped - skipped
            if not q:
                b = self._bits  # (the level alone in it: no new int)
                self._bits = 0 if b == bit else b & _CLEAR[level]
            if popped or not q:  # served (or empty): not starving
                self._since[level] = 0.0

    # -- registered I/O levels ----------------------------------------------

    # Registered I/O per level, and the levels the kernel signals; ready I/O
    # queued at the level it was registered at (core.iolevels).
    push_io = iolevels.push_io
    io_register = iolevels.io_register
    io_unregister = iolevels.io_unregister
    io_signalled = iolevels.io_signalled
    io_wakeup = iolevels.io_wakeup

    def push_threadsafe(self, handle: Any) -> None:
        """Queue from another thread or a signal handler; the backend wakes the poll."""
        self.inbox.append(handle)

    # Priority inheritance through locks (core.boosting): a boosted task's
    # steps and timers run at least at its boost.
    boost = boosting.boost
    unboost = boosting.unboost
    _boosted = boosting.boosted

    def set_debug(self, enabled: bool) -> None:
        """Debug mode on or off (it times callbacks: never a flat round)."""
        self.debug = enabled
        self.flat_bit = -1

    def has_work(self) -> bool:
        return self._bits != 0 or bool(self.inbox)

    def run_direct(self, level: int, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` now, as if dispatched at *level*: what it wakes
        inherits the level.  For an activation that need not wait in the
        queue (nothing more urgent is queued): a protocol callback of a
        prioritized or classified connection, an event's handler run from
        its job."""
        prev = self.current
        self.current = level
        try:
            return fn(*args)
        finally:
            self.current = prev

    def queued_above(self, level: int, below: int = NQUEUES) -> bool:
        """Whether a callback more urgent than *level* (and less than *below*)
        waits in the queue.

        The dispatch loop clears a level's bit when it leaves the level, so a
        set bit may name a level just drained: the deques decide.
        """
        b = self._bits if below >= NQUEUES else self._bits & _BELOW[below]
        levels = self._levels
        lv = b.bit_length() - 1
        while lv > level:
            if levels[lv]:
                return True
            b &= _CLEAR[lv]
            lv = b.bit_length() - 1
        return False

    # -- timers ------------------------------------------------------------

    def move_due_timers(self, end: float) -> None:
        """Queue every live timer due before *end* at its priority."""
        timers = self.timers
        if not timers.n:
            return
        if self.inbox:  # as asyncio: thread-safe callbacks were ready first
            self.drain_inbox()
        h: Any
        for h in timers.pop_due(end):
            level = h._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
            if self.boosts:
                level = self._boosted(h, level)
            self._enqueue(h, level, h._when)  # a timer is late from its deadline

    # -- dispatch ----------------------------------------------------------

    def drain_inbox(self) -> None:
        """Queue what other threads and signal handlers handed in, in order."""
        inbox = self.inbox
        while inbox:
            handle = inbox.popleft()
            if handle is URGENT_IO:
                # Urgent I/O is ready (a signal handler said so): what runs now
                # ends at its next callback (a bit as end_flat_round's), and
                # run_ready returns for a poll.
                self.signalled = True
                self._bits |= _BIT[NQUEUES - 1]
                if self.on_signal is not None:
                    self.on_signal()
                continue
            level = handle._context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
            if self.boosts:
                level = self._boosted(handle, level)
            self._enqueue(handle, level)

    def run_ready(self, floor: int = -1, limit: int = -1) -> int:
        """Run one round of ready callbacks.  The only place callbacks are called.

        The inner loop drains one level while nothing more urgent is queued
        (checked after every callback: one comparison of the bitmap), and
        settles the bookkeeping of that level once when it leaves it.
        With *floor*, only levels above it run (and no aging: what waits at
        or below it is left, in order, to a later round).  With *limit*, at
        most that many callbacks are taken (and no aging); the return value
        is then how many were taken at level ``floor + 1`` (0 otherwise).
        """
        if self.inbox:
            self.drain_inbox()
        bits = self._bits
        if not bits:
            return 0
        if not self.timers.n:
            self.timer_top = -1
        if (not bits & (bits - 1) and floor < 0 and limit < 0 and self._watch_bits < bits << 1
                and self.timer_top < bits.bit_length() and not self.boosts and not self.debug):
            # One level is queued and nothing (I/O, a timer above it) could
            # bring more urgent work by time: asyncio's round is this round,
            # without its per-level bookkeeping.
            self.flat_bit = bits  # the backend may ask run_flat() directly
            self.run_flat(bits.bit_length() - 1)
            return 0
        levels = self._levels
        # what is ready now: at most this many run in this round
        n = len(self) if bits & (bits - 1) else len(levels[bits.bit_length() - 1])
        if 0 <= limit < n:
            n = limit
        low = 0  # taken at floor + 1
        clock = self._clock
        probe = self._probe
        debug = self.debug
        # A round of one callback needs no clock: nothing can wait behind it.
        deadline = clock() + self.slice if n > 1 else _INF
        start, n_start = deadline - self.slice, n
        poll = False
        try:
            if bits & (bits - 1) and self.aging is not None and floor < 0 and limit < 0:
                n -= self._run_aged(clock())
            while n > 0:
                bits = self._bits
                if not bits:
                    break
                if self.signalled:  # urgent I/O is ready: the backend polls
                    self.signalled = False
                    if not levels[NQUEUES - 1]:
                        self._bits &= _CLEAR[NQUEUES - 1]  # drain_inbox's
                    break
                level = bits.bit_length() - 1
                if level <= floor:
                    break
                q = levels[level]
                above = _ABOVE[level]  # the bitmap reaches this: more urgent work
                # Only a timer or I/O above this level can bring more urgent
                # work by time; without either, the clock is not read per
                # callback (threadsafe work shows up in the inbox).  A timer
                # set above it during this share ends the share (see
                # raise_timer_top); a boosted task's timer runs at its boost.
                watch = self._watch_bits >= above or self.timer_top > level or (
                    self.boosts and self.timers.n)
                self.current = level
                # This level's share of the round: what it holds now (what is
                # pushed to it meanwhile waits for the loop below to return).
                k = len(q)
                if k > n:
                    k = n
                popped = skipped = 0  # skipped: cancelled ones
                # The lateness probe of this level, if one is in flight: one
                # started meanwhile is on a handle pushed after this share's k.
                p = probe[level]
                try:
                    for popped in range(1, k + 1):
                        try:
                            handle = q.popleft()
                        except IndexError:  # a boost moved its handles away
                            popped -= 1
                            break
                        handle._aem_q = False  # see push_io
                        if handle._cancelled:
                            skipped += 1
                        elif debug:
                            self._run_debug(handle)
                        else:
                            # handle._run(), inlined (see report_callback_error);
                            # a call with *args builds a list and a tuple, one
                            # without does not: readers take no arguments, task
                            # wakeups one.
                            args = handle._args
                            try:
                                if not args:
                                    handle._context.run(handle._callback)
                                elif len(args) == 1:
                                    handle._context.run(handle._callback, args[0])
                                else:
                                    handle._context.run(handle._callback, *args)
                            except (SystemExit, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                report_callback_error(handle, exc)
                        if handle is p:
                            p = None
                            if handle._cancelled:
                                self._end_probe(level)
                            else:
                                self._sample(level, clock())
                        if self._bits >= above:
                            break
                        if self.inbox:
                            self.drain_inbox()
                            if self._bits >= above:
                                break
                        if not watch:
                            continue
                        now = clock()
                        if now >= deadline:
                            # Slice spent.  If I/O above the backlog's level may
                            # be ready, return so the backend polls; otherwise
                            # only timers and other threads can bring urgent
                            # work: pick those up here, without a poll that
                            # would re-list every busy fd.  (Every call here
                            # is paid once per slice, from cold caches: the
                            # checks that can say "nothing" are inlined.)
                            self.slices += 1
                            # How long the round has left, at its pace so far:
                            # a backend may leave what can wait that long to
                            # the poll at its end.
                            self.round_left = (n - popped) * (now - start) / (n_start - n + popped)
                            if self._watch_bits.bit_length() > self._bits.bit_length() and (
                                    self.io_ready is None or self.io_ready(level)):
                                io_poll = self.io_poll
                                if io_poll is None:
                                    poll = True
                                    break
                                # the backend polls without blocking and
                                # queues what is ready; the round goes on
                                # (a new round costs more than the poll)
                                if io_poll():
                                    self.polls += 1
                            timers = self.timers
                            if timers.n and now > timers.soon:
                                self.move_due_timers(now)
                            if self.inbox:
                                self.drain_inbox()
                            deadline = now + self.slice
                            if self._bits >= above:
                                break
                finally:
                    n -= popped
                    if level == floor + 1:
                        low += popped
                    self.dispatched[level] += popped - skipped
                    if not q:
                        b = self._bits
                        self._bits = 0 if b == _BIT[level] else b & _CLEAR[level]
                    if popped or not q:  # served (or empty): not starving
                        self._since[level] = 0.0
                if poll:
                    break
        finally:
            self.current = _NOT_DISPATCHING
        return low

    def _sample(self, level: int, now: float) -> None:
        """The probe of *level* ran: its lateness recorded, the countdown
        to the next probe starts (_end_probe's two steps, inlined)."""
        rec = self.lateness.get(level)
        if rec is None:
            rec = self.lateness[level] = LatencyRecorder()
        late = now - self._probe_t[level]
        rec.add(late if late > 0.0 else 0.0)
        self._probe[level] = None
        self._skip[level] = _SAMPLE_EVERY

    def _end_probe(self, level: int) -> None:
        self._probe[level] = None
        self._skip[level] = _SAMPLE_EVERY

    def _run_aged(self, now: float) -> int:
        """Run the oldest callback of each level starved for ``aging`` seconds."""
        aging = self.aging
        assert aging is not None
        since = self._since
        ran = 0
        for level in list(self.levels_below(self.top())):
            s = since[level]
            if s == 0.0:
                since[level] = now
                continue
            if now - s < aging:
                continue
            handle = self.pop_level(level)
            handle._aem_q = False
            since[level] = now if self._levels[level] else 0.0
            ran += 1
            if handle._cancelled:
                if self._probe[level] is handle:
                    self._end_probe(level)  # or the level is never sampled again
                continue
            self.aged += 1
            self.current = level
            if self.debug:
                self._run_debug(handle)
            else:
                handle._run()
            self.dispatched[level] += 1
            if self._probe[level] is handle:
                self._sample(level, self._clock())
        return ran

    def _run_debug(self, handle: Any) -> None:
        owner = self.owner
        try:
            if owner is not None:
                owner._current_handle = handle
            t0 = self._clock()
            handle._run()
            dt = self._clock() - t0
            if dt >= getattr(owner, "slow_callback_duration", 0.1):
                import logging
                from asyncio.base_events import _format_handle  # type: ignore[attr-defined]

                logging.getLogger("asyncio").warning(
                    "Executing %s took %.3f seconds", _format_handle(handle), dt
                )
        finally:
            if owner is not None:
                owner._current_handle = None

    # -- teardown and statistics --------------------------------------------

    def clear(self) -> None:
        for handle in self:  # dropped: a reader may be queued again later
            handle._aem_q = False
        super().clear()
        self.inbox.clear()
        self.timers.clear()
        self._probe = [None] * NQUEUES
        self._skip[:] = [1] * NQUEUES  # the same list: a backend's call_soon holds it

    def statistics(self, backend: str, fast_path: bool = False) -> LoopStatistics:
        t = self.timers
        return LoopStatistics(
            backend=backend, queued=self.depths(),
            dispatched={lv: c for lv, c in enumerate(self.dispatched) if c},
            lateness={lv: r.summary() for lv, r in sorted(self.lateness.items())},
            polls=self.polls, slices=self.slices, aged=self.aged, inherited=self.inherited,
            fast_path=fast_path, timers_pending=t.n, timers_fired=t.fired,
            timer_wakeups=t.wakeups, timer_wakeups_saved=t.wakeups_saved,
            time_slice=self.slice, aging=self.aging, urgent_signals=self.signals,
        )
