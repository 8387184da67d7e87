"""The uvloop backend's hand-off state (see "Hand-off" in backends/uv.py):
the slots read on every ``call_soon``, how uvloop's ready deque is found,
the urgent fds that checkpoints among the hand-offs ask, and in debug mode
the filter that keeps uvloop from reporting this backend's own handles (the
core reports the callbacks they run)."""

from __future__ import annotations

import collections
import gc
import logging
import select
from typing import Any

import uvloop

from ..core.priority import DEFAULT_PRIORITY, JOB_LEVEL

__all__ = ["CAN_WATCH", "CHECK_EVERY", "HANDOFF_MAX", "UrgentFdsMixin"]

_uv_call_soon = uvloop.Loop.call_soon

# _HandOff.above while no hand-off is pending: above every level's bit.
_NEVER = 1 << 200
# Hand-offs in one epoch (see "Hand-off" in backends/uv.py): a bound on the
# batch a round at the back (work at the hand-offs' level or below) waits
# behind.  Work from other threads and
# more urgent work does not wait for it: it is taken at the front.
HANDOFF_MAX = 1024
# With urgent fds watched: a checkpoint after every this many hand-offs (a
# power of two: the budget's low bits count them).
CHECK_EVERY = 16
_CHECK_MASK = CHECK_EVERY - 1
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

    __slots__ = ("above", "base", "blind_top", "budget", "check", "h", "io_top", "saved",
                 "tail", "top")

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
        # -1: none): every CHECK_EVERY-th hand-off below it is followed by a
        # checkpoint that asks whether one is ready.
        self.check = -1


def _find_ready(loop: uvloop.Loop) -> tuple[Any, Any]:
    """uvloop's ready queue of *loop* (the deque its call_soon appends to and
    each iteration pops from) and a handle that does nothing; found by asking
    for one callback and looking for it among the loop's referents.  (None,
    None) if this uvloop keeps it elsewhere: the backend then never hands
    callbacks off nor takes them back."""
    h = _uv_call_soon(loop, _noop)
    for obj in gc.get_referents(loop):
        if type(obj) is collections.deque and any(x is h for x in obj):
            obj.remove(h)
            return obj, h
    h.cancel()
    return None, None


class UrgentFdsMixin:
    """The loop's urgent fds (a UVLoop's part; see below)."""

    _aem: Any
    _aem_ho: _HandOff
    _aem_urgent: Any
    _aem_urgent_fds: dict[int, tuple[int, Any]]
    _aem_held: Any
    _aem_ready: Any
    _aem_hold: Any

    # -- urgent fds: asked among hand-offs ---------------------------------------
    #
    # Listening sockets and connections of servers made under a priority above
    # the default are also registered (level-triggered, for input) in an epoll
    # set of the loop's own.  Hand-offs then go on below their level; every
    # CHECK_EVERY-th is followed by a checkpoint that polls that set without
    # blocking: if an urgent fd is ready, the rest of uvloop's queue is held
    # so that libuv polls now and the urgent event runs first.

    def _aem_note_io(self, level: int, watched: bool = False, handoffs: bool = True) -> None:
        """I/O was registered at *level*: no hand-off below it from now on
        (its readiness must not wait behind a batch in uvloop's queue) --
        unless it is *watched*: its fds are in the loop's urgent epoll set,
        which checkpoints among the hand-offs ask (see _aem_watch).  Watched
        I/O with *handoffs* False still stops hand-offs below it (classified
        connections: any message may be urgent, and a checkpoint every few
        hand-offs would be too late), but a spent slice asks the set whether
        it is ready instead of returning to libuv (see _aem_io_ready)."""
        ho = self._aem_ho
        if not self._aem._io_bits >> level & 1:
            self._aem.io_register(level)
        watched = watched and CAN_WATCH
        if not watched and level > ho.blind_top:
            ho.blind_top = level
        if watched and handoffs:
            return
        if level > ho.io_top:
            ho.io_top = level
        if level > ho.top:
            ho.top = level

    def _aem_watch(self, fd: int, level: int, owner: Any = None) -> None:
        """Watch *fd*, whose events run at *level*, for *owner*."""
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
        self._aem_urgent_fds[fd] = (level, owner)
        if level > self._aem_ho.check:
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

    def _aem_urgent_above(self, level: int) -> bool:
        """Is a watched fd whose events run above *level* ready?"""
        fds = self._aem_urgent_fds
        return any(fds.get(fd, (level,))[0] > level for fd, _ in self._aem_urgent.poll(0))

    def _aem_io_ready(self, level: int) -> bool:
        """At a spent slice of a round at *level* (the core's io_ready): may
        I/O above it be ready?  Only the urgent set can say no, and only if
        no other I/O is registered above *level*."""
        if self._aem_urgent is None or self._aem_ho.blind_top > level:
            return True
        if self._aem_ho.check >= JOB_LEVEL and (self._aem_ready or self._aem_held):
            # A classified server's connection just accepted is not watched
            # until its connection_made, which waits in uvloop's queue (or
            # among the held callbacks): let it run.  (Hand-offs are stopped
            # below job level then, so that queue holds uvloop's own
            # callbacks; with a prioritized site only, it holds hand-offs.)
            return True
        return self._aem_urgent_above(level)

    def _aem_checkpoint(self) -> None:
        if self._aem_urgent is None or self._aem_held or self._aem_ready is None:
            return
        if self._aem_urgent_above(self._aem_ho.h):
            self._aem_hold(poll_first=True)


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
