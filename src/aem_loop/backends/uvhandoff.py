"""The uvloop backend's hand-off state (see "Hand-off" in backends/uv.py):
the slots read on every ``call_soon``, how uvloop's ready deque is found,
the urgent fds that checkpoints among the hand-offs ask, and in debug mode
the filter that keeps uvloop from reporting this backend's own handles (the
core reports the callbacks they run)."""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import math
import select
import time
from typing import Any

import uvloop

from ..core.handles import URGENT_IO
from ..core.iolevels import JOB_TAIL_SLICES
from ..core.priority import DEFAULT_PRIORITY, JOB_LEVEL
from .sigio import UrgentSignals
from .tiers import TIERED

__all__ = ["CAN_WATCH", "CHECK_EVERY", "HANDOFF_MAX", "HeldQueueMixin", "UrgentFdsMixin"]

_uv_call_soon = uvloop.Loop.call_soon
_uv_call_soon_threadsafe = uvloop.Loop.call_soon_threadsafe

# _HandOff.above while no hand-off is pending: above every level's bit.
_NEVER = 1 << 200
# Hand-offs in one epoch (see "Hand-off" in backends/uv.py): a bound on the
# batch a round at the back (work at the hand-offs' level or below) waits
# behind.  Work from other threads and
# more urgent work does not wait for it: it is taken at the front.
HANDOFF_MAX = 1024
# With urgent fds watched: a checkpoint after at most this many hand-offs (a
# power of two: the budget's low bits count them); fewer while the hand-offs
# between two checkpoints take longer than a time slice (see _aem_checkpoint).
CHECK_EVERY = 16
_CHECK_MASK = CHECK_EVERY - 1
_monotonic = time.monotonic
_SQRT2 = 2 ** 0.5
# Urgent fds need epoll (Linux); elsewhere their I/O stops hand-offs below it.
CAN_WATCH = hasattr(select, "epoll")


def _fileno(fd: Any) -> int | None:
    """The fd number of an int or an object with fileno(); None for anything
    else (for add_reader, uvloop then raises its own ValueError for it)."""
    if isinstance(fd, int):
        return fd
    try:
        return int(fd.fileno())
    except (AttributeError, TypeError, ValueError, OSError):
        return None


def _noop() -> None:
    pass


_UNSET = object()


class _HandOff:
    """The hand-off state of one loop, in slots (read on every call_soon)."""

    __slots__ = ("above", "base", "blind_top", "budget", "check", "checked", "h", "io_top",
                 "mask", "per", "saved", "tail", "top")

    def __init__(self) -> None:
        self.budget = 0  # hand-offs allowed before the next round at the back
        self.base = 0  # the budget when hand-offs were last counted as dispatched
        # Hand-offs behind a round (see "Hand-off" in backends/uv.py).
        # While a round is armed at the back, and while it runs if some were
        # made behind it: the hand-offs still allowed (the budget is 0 then).
        self.saved = 0
        # The first hand-off behind the armed round records the last callback
        # the core held at level h then (tail; None: none): the round runs
        # level h up to it, before the hand-offs.  More are handed off behind
        # the round, or beside it while it runs, only while the core's level
        # h ends with that tail (nothing queued there since, so nothing that
        # must run after them).  _UNSET: none made behind the armed round.
        # (A reader's handle is never the tail: it is queued again as itself.)
        self.tail: Any = _UNSET
        self.h = -1  # the level of the pending hand-offs; -1: none pending
        self.above = _NEVER  # 2 << h: core bits this high preempt them
        # No hand-off below top: the highest level I/O was registered at
        # (io_top), or a pending timer was created at (reset when none pends).
        self.top = DEFAULT_PRIORITY
        self.io_top = DEFAULT_PRIORITY
        # The highest level I/O that the urgent fds do not cover was
        # registered at: a spent slice below it must let libuv poll.
        self.blind_top = DEFAULT_PRIORITY
        # The highest level an urgent fd was ever watched at (see _aem_watch;
        # -1: none): every (mask + 1)-th hand-off below it is followed by a
        # checkpoint that asks whether one is ready; the checkpoint adapts the
        # stride (mask: 2**k - 1, at most _CHECK_MASK) to the time that the
        # hand-offs since the last one (checked: the clock then) took.
        self.check = -1
        self.mask = _CHECK_MASK
        self.checked = 0.0
        # The time between the last two checkpoints per hand-off made in
        # it: how soon the callbacks queued now end uvloop's pass (libuv
        # polls then).
        self.per = math.inf


def _find_ready(loop: uvloop.Loop) -> tuple[Any, Any]:
    """uvloop's ready queue of *loop* (the deque its call_soon appends to and
    each iteration pops from) and a stand-in for it: a handle cancelled, which
    uvloop's pass pops and skips without a call; found by asking for one
    callback and looking for it among the loop's referents.  (None, None) if
    this uvloop keeps it elsewhere: the backend then never hands callbacks
    off nor takes them back."""
    h = _uv_call_soon(loop, _noop)
    h.cancel()
    for obj in gc.get_referents(loop):
        if type(obj) is collections.deque and any(x is h for x in obj):
            obj.remove(h)
            return obj, h
    return None, None


class UrgentFdsMixin:
    """The loop's urgent fds (a UVLoop's part; see below)."""

    _aem: Any
    _aem_ho: _HandOff
    _aem_urgent: Any
    _aem_urgent_fds: dict[int, tuple[int, Any, bool]]
    _aem_held: Any
    _aem_ready: Any
    _aem_hold: Any
    _aem_sig: UrgentSignals | None
    _aem_sig_h: Any
    _aem_watch_top: int
    _aem_use_signals: bool

    # -- urgent fds: asked among hand-offs ---------------------------------------
    #
    # Listening sockets and connections of servers made under a priority above
    # the default, and of classified servers (any message may be urgent), are
    # also registered (level-triggered, for input) in an epoll set of the
    # loop's own.  Hand-offs then go on below their level; every few are
    # followed by a checkpoint that polls that set without blocking: if an
    # urgent fd is ready, the rest of uvloop's queue is held so that libuv
    # polls now and the urgent event runs first.  The stride adapts to the
    # hand-offs' cost: up to CHECK_EVERY short callbacks, down to every one
    # while each takes a time slice, so that an urgent event waits about a
    # slice (or one callback) behind the hand-offs, not CHECK_EVERY of them
    # (once the stride has adapted: long callbacks right after a run of
    # short ones run at the short ones' stride until the next checkpoint).

    # -- urgent fds signalled instead (backends.sigio) ----------------------------
    #
    # When the checkpoints and slices find the urgent fds quiet, the kernel
    # signals them instead: no checkpoint is placed among the hand-offs and
    # rounds below their levels do not watch the clock for them.  A signal
    # puts a checkpoint at the front of uvloop's queue (it runs after the
    # callback running now) and, inside a core round, URGENT_IO in the inbox
    # (the round ends at its next callback).

    def _aem_signals(self) -> UrgentSignals:
        sig = self._aem_sig
        if sig is None:
            sig = self._aem_sig = UrgentSignals(self._aem, self._aem_kick,
                                                self._aem_urgent_live, self._aem_signalled,
                                                self.call_later,  # type: ignore[attr-defined]
                                                self._aem_use_signals)
            h = self._aem_sig_h = _uv_call_soon(self, self._aem_on_sigio)  # type: ignore[arg-type]
            self._aem_ready.remove(h)
        return sig

    def _aem_urgent_live(self) -> list[int]:
        """The watched fds, less the listening sockets of servers closed
        since (nothing tells this backend: their numbers may be reused)."""
        fds = self._aem_urgent_fds
        for fd, (_, owner, listening) in list(fds.items()):
            if listening and not owner.is_serving():
                del fds[fd]
                try:
                    self._aem_urgent.unregister(fd)
                except (OSError, ValueError):  # closed: epoll dropped it
                    pass
        return list(fds)

    def _aem_kick(self) -> None:
        """The SIGIO handler's (see backends.sigio): between two bytecodes."""
        ready = self._aem_ready
        if ready is None:
            return
        if self._aem.current >= 0:  # inside a core round: it ends
            self._aem.inbox.append(URGENT_IO)
        ready.appendleft(self._aem_sig_h)
        _uv_call_soon_threadsafe(self, _noop)  # type: ignore[arg-type]  # libuv may wait

    def _aem_signalled(self, on: bool) -> None:
        ho = self._aem_ho
        if on:
            ho.check = -1  # no checkpoints
            # rounds watch what is not signalled: levels up to blind I/O's
            self._aem.io_signalled(TIERED & -(2 << ho.blind_top))
        else:
            ho.check = self._aem_watch_top
            self._aem.io_signalled(0)

    def _aem_on_sigio(self) -> None:
        """A checkpoint put at the front of uvloop's queue by a signal."""
        sig = self._aem_sig
        if sig is None:
            return
        sig.taken()
        if self._aem_urgent is None or self._aem_held or self._aem_ready is None:
            return
        ready = self._aem_urgent.poll(0)
        if ready:
            self._aem_urgent_first(ready, max(self._aem_ho.h, self._aem._bits.bit_length() - 1))

    def _aem_note_io(self, level: int, watched: bool = False) -> None:
        """I/O was registered at *level*: no hand-off below it from now on
        (its readiness must not wait behind a batch in uvloop's queue) --
        unless it is *watched*: its fds are in the loop's urgent epoll set,
        which checkpoints among the hand-offs ask (see _aem_watch), and
        which a spent slice asks instead of returning to libuv (see
        _aem_io_ready)."""
        ho = self._aem_ho
        if not self._aem._io_bits >> level & 1:
            self._aem.io_register(level)
        if watched and CAN_WATCH:
            return
        if level > ho.blind_top:
            ho.blind_top = level
            if self._aem_sig is not None and self._aem_sig.pid:
                self._aem_signalled(True)  # the levels signalled shrink
        if level > ho.io_top:
            ho.io_top = level
        if level > ho.top:
            ho.top = level

    def _aem_watch(self, fd: int, level: int, owner: Any = None,
                   listening: bool = False) -> None:
        """Watch *fd*, whose events run at *level*, for *owner* (a server's
        *listening* socket, or a connection's)."""
        if not CAN_WATCH:
            return
        ep = self._aem_urgent
        if ep is None:
            ep = self._aem_urgent = select.epoll()
            self._aem.io_ready = self._aem_io_ready
        try:
            ep.register(fd, select.EPOLLIN)
        except FileExistsError:
            ep.modify(fd, select.EPOLLIN)
        except OSError:  # closed meanwhile
            return
        self._aem_urgent_fds[fd] = (level, owner, listening)
        if level > self._aem_watch_top:
            self._aem_watch_top = level
        sig = self._aem_sig
        if sig is not None and sig.pid:
            sig.added(fd)
        elif level > self._aem_ho.check:
            self._aem_ho.check = level

    def _aem_watch_transport(self, transport: Any, level: int, owner: Any) -> int | None:
        """Watch the socket of *transport* (a connection whose events run at
        *level*) for *owner*; its fd, or None if it has none (closed already)."""
        fd = _fileno(transport.get_extra_info("socket"))
        if fd is None or fd < 0:
            return None
        self._aem_watch(fd, level, owner)
        return fd

    def _aem_unwatch(self, fd: int, owner: Any) -> None:
        """*owner* no longer needs *fd* watched (unless the number was
        reused meanwhile: uvloop closes a socket before its connection_lost)."""
        ep = self._aem_urgent
        watched = self._aem_urgent_fds.get(fd)
        if ep is not None and watched is not None and watched[1] is owner:
            del self._aem_urgent_fds[fd]
            try:
                ep.unregister(fd)
            except OSError:  # closed already (and so dropped from the set)
                pass
            if self._aem_sig is not None and self._aem_sig.pid:
                self._aem_sig.removed(fd, not self._aem_urgent_live())

    def _aem_urgent_in(self, ready: list[tuple[int, int]], level: int) -> int:
        """Is a watched fd whose events run above *level* among what a poll of
        the urgent set found?  0: none; 1: a connection's; 2: a server's
        listening socket (a new connection)."""
        fds = self._aem_urgent_fds
        found = 0
        for fd, _ in ready:
            watched = fds.get(fd)
            if watched is not None and watched[0] > level:
                if watched[2]:
                    return 2
                found = 1
        return found

    def _aem_job_only(self, ready: list[tuple[int, int]], level: int) -> bool:
        """Are the watched fds above *level* among *ready* all job level's
        (classified servers': what they carry is mostly not urgent, and it
        takes reading it to know)?"""
        fds = self._aem_urgent_fds
        for fd, _ in ready:
            watched = fds.get(fd)
            if watched is not None and level < watched[0] < JOB_LEVEL:
                return False
        return True

    def _aem_io_ready(self, level: int) -> bool:
        """At a spent slice of a round at *level* (the core's io_ready): may
        I/O above it be ready?  Only the urgent set can say no, and only if
        no other I/O is registered above *level*."""
        if self._aem_urgent is None or self._aem_ho.blind_top > level:
            return True
        if self._aem_ho.check >= JOB_LEVEL and (self._aem_ready or self._aem_held):
            # A classified server's connection just accepted is not watched
            # until its connection_made, which may wait in uvloop's queue (or
            # among the held callbacks): let that queue run.
            return True
        ready = self._aem_urgent.poll(0)
        if self._aem_ready is not None:
            self._aem_signals().asked(bool(ready))  # quiet: signalled instead
        return self._aem_urgent_in(ready, level) > 0

    def _aem_checkpoint(self) -> None:
        ho = self._aem_ho
        # The stride for the checkpoints placed from now on: the hand-offs
        # that take about a time slice at the rate since the last one, the
        # power of two nearest that number (so checkpoints come a slice
        # apart on average: rounding down placed them ~0.75 slice apart, and
        # each costs ~3 us); growing at most twofold per checkpoint, up to
        # CHECK_EVERY.  (Under load the loop does not wait for I/O between
        # two checkpoints; after an idle wait the stride shrinks, and grows
        # back within a few checkpoints.  The thread's CPU time would not
        # count the wait, but reading it is a system call: ~1.5 us here.)
        now = _monotonic()
        spent = now - ho.checked
        ho.checked = now
        stride = ho.mask + 1
        if spent > 0:
            ho.per = spent / stride
        want = _SQRT2 * self._aem.slice * stride / spent if spent > 0 else 2.0 * stride
        if want < stride:
            ho.mask = (1 << int(want).bit_length() - 1) - 1 if want >= 1 else 0
        elif want >= 2 * stride and stride < CHECK_EVERY:
            ho.mask = ho.mask << 1 | 1
        if self._aem_urgent is None or self._aem_held or self._aem_ready is None:
            return
        ready = self._aem_urgent.poll(0)
        self._aem_signals().asked(bool(ready))  # quiet: signalled instead
        if ready:  # (the common answer is none, without a call)
            self._aem_urgent_first(ready, ho.h)

    # -- a watched server's new connection ---------------------------------------
    #
    # libuv's poll accepts it and uvloop queues its connection_made at the
    # back of its queue, behind whatever the queue holds (hand-offs, a core
    # round): no checkpoint would cut those short for it, since its listener
    # is not ready any more.  The server's protocol factory, which uvloop
    # calls just before it queues connection_made, says so
    # (uvproto._accepting): the callback then last in the queue is noted,
    # and a handle put at the front of the next pass moves what follows it
    # (the connection_made) to the front, accepted connections in their
    # order; everything else keeps its place.  The same holds after a
    # checkpoint that found the listener ready and held the queue for
    # libuv's poll.

    _aem_accept_h: Any = None  # the handle that moves them (_aem_accepted_first)
    _aem_accept_after: list[Any] | None = None  # per accept: the last callback then
    _aem_listener_ready = False  # a checkpoint found a watched listener ready

    def _aem_accepted(self, always: bool) -> None:
        """A watched server's protocol factory returned: uvloop queues the
        connection's connection_made next (in libuv's poll).  A classified
        server's (not *always*) goes first only after a checkpoint found its
        listener ready: all its connections are accepted there, most of them
        not urgent."""
        if not (always or self._aem_listener_ready):
            return
        self._aem_listener_ready = False
        ready = self._aem_ready
        if ready is None:
            return
        after = self._aem_accept_after
        if after is None:
            h = self._aem_accept_h
            if h is None:
                h = self._aem_accept_h = _uv_call_soon(self, self._aem_accepted_first)  # type: ignore[arg-type]
                ready.pop()
            ready.appendleft(h)  # first in the next pass
            after = self._aem_accept_after = []
        after.append(ready[-1])  # (this handle, if the queue was empty)

    def _aem_accepted_first(self) -> None:
        """First in the pass after the accepting poll: each accepted
        connection's connection_made goes to the front, in their order."""
        after = self._aem_accept_after
        self._aem_accept_after = None
        ready = self._aem_ready
        if ready is None or not after:
            return
        n = len(ready)
        moving = []
        for p in after:
            if p is self._aem_accept_h:
                i = 0  # the queue was empty: what followed this handle
            else:
                for k, h in enumerate(reversed(ready)):
                    if h is p:
                        i = n - k
                        break
                else:  # run or moved already
                    continue
            if i < n:
                moving.append(ready[i])
        for h in moving:
            ready.remove(h)
        ready.extendleft(reversed(moving))

    def _aem_urgent_first(self, ready: list[tuple[int, int]], level: int) -> None:
        """A checkpoint's answer: if a watched fd above *level* is among
        *ready*, libuv polls right after the callback running now.

        A connection's fd, while hand-offs are pending at *level*: the rest
        of uvloop's running pass is made of stand-ins that it skips -- as
        many as the queue holds, so at least as many as the pass may still
        pop -- ahead of the callbacks, which keep their order for the pass
        after the poll; what the poll brings above them preempts them as it
        preempts hand-offs (a round at the front).  Unless only classified
        connections (job level) are ready and the callbacks queued end the
        pass within JOB_TAIL_SLICES time slices at the pace measured between
        checkpoints: under a flood of requests every such connection is
        ready at every checkpoint, and what it carries is seldom urgent;
        their poll comes soon enough (the selector backend's rule for its
        job level).  Otherwise (a server's listening socket: its new
        connection's connection_made then goes first, see _aem_accepted)
        uvloop's queue is held (_aem_hold)."""
        urgent = self._aem_urgent_in(ready, level)
        if not urgent:
            return
        q = self._aem_ready
        ho = self._aem_ho
        if urgent == 1 and level >= 0 and ho.h == level and not self._aem_held:
            if len(q) * ho.per < JOB_TAIL_SLICES * self._aem.slice and self._aem_job_only(
                    ready, level):
                return  # libuv polls soon anyway
            if q:
                q.extendleft(itertools.repeat(self._aem_noop, len(q)))
        elif not self._aem_hold(poll_first=True):
            return
        if urgent == 2:
            self._aem_listener_ready = True


class HeldQueueMixin:
    """uvloop's queue taken out and released by the feeder (a UVLoop's part)."""

    _aem_ready: Any
    _aem_ho: _HandOff
    _aem_held: collections.deque[Any]
    _aem_feeder: Any
    _aem_noop: Any
    _aem_inbox_h: Any
    _aem_front_h: Any
    _aem_feed: Any
    _aem_held_since: float
    _aem: Any

    def _aem_hold(self, poll_first: bool = False) -> bool:
        """Take what uvloop's queue holds out of it, to be released one by one
        by the feeder, which runs more urgent work and due timers first: when
        the fast path ends (callbacks queued on it, at the default level), and
        when a round's slice ends before what must run ahead of the hand-offs
        behind it (*poll_first*: the feeder runs after libuv's next poll).
        The deque keeps its length (uvloop's running pass pops as many as it
        counted): the feeder and no-op stand-ins.  False if it was empty."""
        ready = self._aem_ready
        n = len(ready)
        if not n:
            return False
        ho = self._aem_ho
        ho.budget = ho.base = ho.saved = 0  # none while held callbacks wait
        held = self._aem_held
        if not held:
            self._aem_held_since = time.monotonic()
        while ready:  # one at a time: another thread may append meanwhile
            held.append(ready.popleft())
        if self._aem_feeder is None:
            self._aem_feeder = _uv_call_soon(self, self._aem_feed)  # type: ignore[arg-type]
            ready.remove(self._aem_feeder)  # placed below
        noop = self._aem_noop
        if poll_first:
            # n stand-ins first: the pass running now ends on them
            ready.extend(itertools.repeat(noop, n))
            ready.append(self._aem_feeder)
        else:
            ready.append(self._aem_feeder)
            ready.extend(itertools.repeat(noop, n - 1))
        return True

    def _aem_age_lead(self, h: int, now: float) -> int:
        """Aging for the lead, when more urgent work took the feeder's turn
        (a task that never blocks): what has starved for ``aging`` runs, as
        a full round runs it (Scheduler._run_aged).  How many ran at *h*."""
        sched = self._aem
        if sched.aging is None:
            return 0
        q = sched._levels[h]
        before = len(q)
        sched._run_aged(now)
        return max(0, before - len(q))

    def _aem_held_aged(self, now: float) -> bool:
        """Has ``aging`` passed since the callbacks were held, or since the
        last release this forced (the feeder's slice was spent at its turns)?
        Then the next held callback goes anyway, and the clock starts again:
        at least one per ``aging`` period."""
        aging = self._aem.aging
        if aging is None or now - self._aem_held_since < aging:
            return False
        self._aem_held_since = now
        return True

    def _aem_hold_later(self, ready: collections.deque[Any]) -> None:
        """Before the feeder goes to the back of uvloop's queue (libuv polls
        first): what uvloop queued there since the hold -- its transports'
        callbacks, e.g. the connection_lost of a transport a held callback
        closed -- goes behind the held callbacks, which were queued before
        it; a stand-in keeps its place (the running pass counted it).  The
        core's own handles stay where they are."""
        if not self._aem_held:
            return
        noop = self._aem_noop
        own = (noop, self._aem_feeder, self._aem_inbox_h, self._aem_front_h)
        held = self._aem_held
        for _ in range(len(ready)):  # one full turn: the order stays
            x = ready.popleft()
            if x in own:
                ready.append(x)
            else:
                held.append(x)
                ready.append(noop)


# -- debug mode: one slow-callback report per callback ---------------------------------

_SLOW_MESSAGES = ("Executing %s took %.3f seconds", "Executing %r took %.3f seconds")


class _CoreHandlesNotSlow(logging.Filter):
    """Debug mode's slow-callback report, once per callback: the core times
    each callback it runs and reports it by its own name; uvloop times its
    own handles, and those of this backend (the core's round, a hand-off in
    debug mode, the timer that wakes the core) would report the same time
    again under the loop's name.  uvloop's reports of them are dropped; its
    reports of its own handles (a transport's connection_made) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg not in _SLOW_MESSAGES or not isinstance(args, tuple) or not args:
            return True
        return "UVLoop._aem_" not in str(args[0])


logging.getLogger("asyncio").addFilter(_CoreHandlesNotSlow())
