"""Urgent tiers: is an fd more urgent than the backlog ready, without a full poll?

A round of dispatch that has spent its time slice must notice urgent
readiness before it runs on, but a full poll there is not free: it lists
every busy fd of the backlog's level too, whose readers then run one poll
at a time instead of in one batch per round.  Here every priority level
above the default that has a reader or writer gets an epoll set of its own
holding just those fds (an fd can sit in several epoll sets).  At a slice
boundary the loop asks the sets of the levels above the backlog for what is
ready (``epoll_wait`` with a timeout of 0, about a microsecond when nothing
is) and queues just that: the backlog's own fds are left to the poll at the
end of the round, where their readers are queued in one batch.

Levels at or below the default have no set: urgent I/O at those levels
above an even lower backlog still means a full poll (rare: a backlog below
the default level with default-level I/O).

When the sets stay quiet, their fds are signalled by the kernel instead of
asked at every slice (``backends.sigio``; ``signals``, set by the backend).
"""

from __future__ import annotations

import select

from ..core.priority import DEFAULT_PRIORITY, NQUEUES
from .sigio import UrgentSignals

__all__ = ["TIERED", "UNTIERED", "UrgentTiers"]

# The levels that have no set: the default and below (bits of the scheduler's
# I/O bitmap).  Above every level, the scheduler's "I/O not known yet" bit:
# it always means a full poll.
UNTIERED = (1 << (DEFAULT_PRIORITY + 1)) - 1

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_BATCH = 64  # ready fds taken from one level's set per ask
# Every level above the default (the ones with a set), as scheduler bits.
TIERED = ((1 << NQUEUES) - 1) & ~UNTIERED


class UrgentTiers:
    __slots__ = ("_eps", "_regs", "signals")

    def __init__(self) -> None:
        self._eps: dict[int, select.epoll] = {}
        self._regs: dict[int, dict[int, int]] = {}  # fd -> {level: epoll mask}
        self.signals: UrgentSignals | None = None  # the backend's, if it can signal

    def update(self, fd: int, rlevel: int | None, wlevel: int | None) -> None:
        """Where *fd* belongs now: its reader at *rlevel*, writer at *wlevel* (None: none)."""
        have = self._regs.get(fd)
        if have is None and wlevel is None:  # the usual case: a connection's reader
            if rlevel is not None and rlevel > DEFAULT_PRIORITY:
                self._join(fd, rlevel)
            return
        want: dict[int, int] = {}
        if rlevel is not None and rlevel > DEFAULT_PRIORITY:
            want[rlevel] = _IN
        if wlevel is not None and wlevel > DEFAULT_PRIORITY:
            want[wlevel] = want.get(wlevel, 0) | _OUT
        if not want:
            if have is not None:  # it leaves every set
                del self._regs[fd]
                self._leave(fd, have)
            return
        have = have or {}
        for level in have:
            if level not in want:
                try:
                    self._eps[level].unregister(fd)
                except (OSError, ValueError):  # closed meanwhile: epoll dropped it
                    pass
        for level, mask in want.items():
            ep = self._set(level)
            if have.get(level) == mask:
                continue
            try:
                if level in have:
                    ep.modify(fd, mask)
                else:
                    ep.register(fd, mask)
            except FileNotFoundError:  # the fd was closed and reused: register anew
                ep.register(fd, mask)
            except FileExistsError:
                ep.modify(fd, mask)
        self._regs[fd] = want
        sig = self.signals
        if sig is not None and sig.pid and not have:
            sig.added(fd)

    def _set(self, level: int) -> select.epoll:
        """*level*'s epoll set, made when first needed."""
        ep = self._eps.get(level)
        if ep is None:
            ep = self._eps[level] = select.epoll()
        return ep

    def _join(self, fd: int, level: int) -> None:
        """*fd*, in no set so far, is read at *level* (above the default)."""
        ep = self._set(level)
        try:
            ep.register(fd, _IN)
        except FileExistsError:  # closed and reused before epoll dropped it
            ep.modify(fd, _IN)
        self._regs[fd] = {level: _IN}
        sig = self.signals
        if sig is not None and sig.pid:
            sig.added(fd)

    def _leave(self, fd: int, had: dict[int, int]) -> None:
        for level in had:
            try:
                self._eps[level].unregister(fd)
            except (OSError, ValueError):  # closed meanwhile: epoll dropped it
                pass
        sig = self.signals
        if sig is not None and sig.pid:
            sig.removed(fd, not self._regs)

    def ready(self, levels: int) -> list[tuple[int, int]]:
        """The (fd, events) ready now in the sets of the levels in the bitmap
        *levels* (at most _BATCH per level; the rest stays ready, level-triggered)."""
        eps = self._eps
        out: list[tuple[int, int]] = []
        while levels:
            level = levels.bit_length() - 1
            ep = eps.get(level)
            if ep is not None:
                got = ep.poll(0, _BATCH)
                if got:
                    out += got
            levels &= ~(1 << level)
        return out

    def __contains__(self, fd: int) -> bool:
        """Is *fd* in a set (a reader or writer above the default level)?"""
        return fd in self._regs

    def fds(self) -> list[int]:
        """The fds in the sets now."""
        return list(self._regs)

    def close(self) -> None:
        if self.signals is not None:
            self.signals.stop()
            self.signals = None  # it holds self.fds (a cycle) and the loop's call_later
        for ep in self._eps.values():
            ep.close()
        self._eps.clear()
        self._regs.clear()
