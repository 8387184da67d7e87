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

Signalled tiers
---------------
Asking costs little, but a round that may have to ask reads the clock after
every callback and pays a slice boundary several times per round: a few
percent of a small server's time, for urgent fds that are seldom ready (a
health check's listener and connections).  When the sets have been quiet
at most slice boundaries and the loop runs in the main thread, the tiers'
fds get ``O_ASYNC`` (the kernel sends the loop's thread SIGIO when one
becomes ready) and the scheduler stops watching their levels (``io_signalled``):
rounds below them run as if they had no I/O.  The SIGIO handler (installed
only while SIGIO has its default disposition; restored when no loop needs
it) puts ``URGENT_IO`` in the scheduler's inbox, read after every callback:
the round ends there and the loop polls, so urgent readiness waits one
callback instead of up to a slice.  Signals that come often (more than one
per ``_BUSY_SLICES`` slices, counted over ``_RATE_WINDOW``) cost more than
asking: the tiers then go back to being asked, and try signals again after
a back-off that doubles each time (up to a minute).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import Any

from ..core.handles import URGENT_IO
from ..core.priority import DEFAULT_PRIORITY, NQUEUES

__all__ = ["UNTIERED", "UrgentTiers"]

# The levels that have no set: the default and below (bits of the scheduler's
# I/O bitmap).  Above every level, the scheduler's "I/O not known yet" bit:
# it always means a full poll.
UNTIERED = (1 << (DEFAULT_PRIORITY + 1)) - 1

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_BATCH = 64  # ready fds taken from one level's set per ask
# Signals: tried when at most _QUIET_HITS of _QUIET_ASKS slice-boundary asks
# found a tier ready; given up when _RATE_WINDOW signals came within
# _RATE_WINDOW * _BUSY_SLICES slices; tried again after a back-off from
# _BACKOFF to _BACKOFF_MAX seconds.
_QUIET_ASKS = 32
_QUIET_HITS = 4
_RATE_WINDOW = 64
_BUSY_SLICES = 4
_BACKOFF = 1.0
_BACKOFF_MAX = 60.0
# Every level above the default (the tiered ones), as scheduler bits.
_TIERED = ((1 << NQUEUES) - 1) & ~UNTIERED
_SIGIO: Any = getattr(signal, "SIGIO", None)  # None: not on this OS
_O_ASYNC = getattr(os, "O_ASYNC", 0)
_F_SETOWN = getattr(fcntl, "F_SETOWN", None)
# Linux: the signal goes to the loop's thread alone (F_SETOWN_EX, F_OWNER_TID),
# so that no other thread sees a system call interrupted by it.
_F_SETOWN_EX = getattr(fcntl, "F_SETOWN_EX", 15 if sys.platform.startswith("linux") else None)
_F_OWNER_TID = 0

# The tiers whose fds are signalled, process-wide (the handler serves all;
# a forked child's copies are not: the kernel signals the parent).
_signalled: list[UrgentTiers] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_signalled.clear)


def _on_sigio(signum: int, frame: Any) -> None:
    """SIGIO: urgent I/O may be ready.  Runs in the main thread between two
    bytecodes, maybe inside a round of dispatch: it only appends to the
    inbox (atomic) and counts."""
    for t in _signalled:
        t.count += 1
        if t.count >= _RATE_WINDOW:
            now = time.monotonic()
            if now - t.since < t.busy:
                t.overload = True
            t.count = 0
            t.since = now
        if not t.pending:
            t.pending = True
            t.sched.inbox.append(URGENT_IO)


def _can_signal() -> bool:
    if _SIGIO is None or not _O_ASYNC or _F_SETOWN is None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # Python runs signal handlers in the main thread only
    return bool(_signalled) or signal.getsignal(_SIGIO) in (signal.SIG_DFL, _on_sigio)


class UrgentTiers:
    __slots__ = ("_eps", "_regs", "asks", "backoff", "busy", "count", "hits", "overload",
                 "pending", "pid", "retry_at", "sched", "since")

    def __init__(self, sched: Any = None) -> None:
        self._eps: dict[int, select.epoll] = {}
        self._regs: dict[int, dict[int, int]] = {}  # fd -> {level: epoll mask}
        self.sched = sched  # to signal; None: never
        self.pid = 0  # the process that set O_ASYNC on the fds (0: not signalled)
        self.asks = self.hits = 0  # slice-boundary asks since the last decision
        self.retry_at = 0.0
        self.backoff = _BACKOFF
        self.count = 0  # signals in the current rate window
        self.since = 0.0  # when the window began
        self.busy = 0.0  # a window shorter than this: signals cost more than asks
        self.overload = False
        self.pending = False  # URGENT_IO in the inbox, not read yet

    def update(self, fd: int, rlevel: int | None, wlevel: int | None) -> None:
        """Where *fd* belongs now: its reader at *rlevel*, writer at *wlevel* (None: none)."""
        want: dict[int, int] = {}
        if rlevel is not None and rlevel > DEFAULT_PRIORITY:
            want[rlevel] = _IN
        if wlevel is not None and wlevel > DEFAULT_PRIORITY:
            want[wlevel] = want.get(wlevel, 0) | _OUT
        have = self._regs.get(fd)
        if not want and not have:
            return
        have = have or {}
        for level in have:
            if level not in want:
                try:
                    self._eps[level].unregister(fd)
                except (OSError, ValueError):  # closed meanwhile: epoll dropped it
                    pass
        for level, mask in want.items():
            ep = self._eps.get(level)
            if ep is None:
                ep = self._eps[level] = select.epoll()
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
        if want:
            self._regs[fd] = want
        else:
            del self._regs[fd]
        if self.pid and not have and want:
            _set_async(fd, True)
        elif self.pid and not want:
            _set_async(fd, False)
            if not self._regs:  # no urgent fd left: SIGIO goes back
                self.stop_signals()

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

    # -- signalled tiers --------------------------------------------------------

    def asked(self, found: bool) -> None:
        """A slice boundary asked the tiers (found: something was ready)."""
        self.asks += 1
        if found:
            self.hits += 1
        if self.asks < _QUIET_ASKS:
            return
        quiet = self.hits <= _QUIET_HITS
        self.asks = self.hits = 0
        if quiet and self.sched is not None and not self.pid:
            self.start_signals()

    def start_signals(self) -> bool:
        """Have the kernel signal the tiers' fds, if this loop can (main
        thread, SIGIO free, not backing off).  Whether it does now."""
        now = time.monotonic()
        if now < self.retry_at or not _can_signal():
            return False
        if not _signalled:
            signal.signal(_SIGIO, _on_sigio)
        _signalled.append(self)
        self.pid = os.getpid()
        self.count = 0
        self.since = now
        self.busy = _RATE_WINDOW * _BUSY_SLICES * self.sched.slice
        self.overload = self.pending = False
        for fd in self._regs:
            _set_async(fd, True)
        self.sched.io_signalled(_TIERED)
        return True

    def stop_signals(self, backoff: bool = False) -> None:
        """Ask the tiers again instead (*backoff*: signals came too often,
        try them again later)."""
        if not self.pid:
            return
        if self.pid == os.getpid():  # not in a forked child: the fds are shared
            for fd in self._regs:
                _set_async(fd, False)
        self.pid = 0
        self.sched.io_signalled(0)
        if self in _signalled:
            _signalled.remove(self)
            if not _signalled and _can_restore():
                signal.signal(_SIGIO, signal.SIG_DFL)
        if backoff:
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, _BACKOFF_MAX)

    def on_signal(self) -> None:
        """URGENT_IO was read from the inbox (the scheduler's on_signal)."""
        self.pending = False
        if self.overload:
            self.overload = False
            self.stop_signals(backoff=True)

    def close(self) -> None:
        self.stop_signals()
        for ep in self._eps.values():
            ep.close()
        self._eps.clear()
        self._regs.clear()


def _set_async(fd: int, on: bool) -> None:
    """O_ASYNC on or off for *fd*, signals to this process."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if on:
            if _F_SETOWN_EX is not None:
                owner = struct.pack("ii", _F_OWNER_TID, threading.get_native_id())
                fcntl.fcntl(fd, _F_SETOWN_EX, owner)
            else:
                fcntl.fcntl(fd, _F_SETOWN, os.getpid())  # type: ignore[arg-type]
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_ASYNC)
        elif flags & _O_ASYNC:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_ASYNC)
    except OSError:  # closed meanwhile
        pass


def _can_restore() -> bool:
    return threading.current_thread() is threading.main_thread() and (
        signal.getsignal(_SIGIO) is _on_sigio)
