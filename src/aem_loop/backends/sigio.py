"""Urgent fds signalled by the kernel instead of asked at every time slice.

Both backends ask whether an urgent fd (I/O registered above the default
level, beside a lower backlog) is ready: the selector backend at each spent
time slice (``backends.tiers``), the uvloop backend at checkpoints among its
hand-offs (``backends.uvhandoff``).  An ask costs little, but a round that
may have to ask reads the clock after every callback, and the asks come
several times per round: a few percent of a small server's time, for fds
that are seldom ready (a health check's listener and connections).

When the asks have found the urgent fds quiet (ready at no more than
``_QUIET_HITS`` of ``_QUIET_ASKS``) and the loop runs in the main thread,
those fds get ``O_ASYNC``, owned by the loop's thread (``F_SETOWN_EX``,
``F_OWNER_TID`` on Linux, so no other thread sees a system call interrupted),
and the backend stops asking: the kernel sends SIGIO when one becomes ready.
The SIGIO handler (installed only while SIGIO has its default disposition,
given back when no loop needs it) runs in the main thread between two
bytecodes, perhaps inside a round of dispatch: it only counts and calls the
backend's *kick*, which appends to deques (atomic): ``URGENT_IO`` to the
scheduler's inbox, read after every callback (the round ends there and the
loop polls), and on the uvloop backend a checkpoint at the front of
uvloop's queue.  An fd that joins while signalled and is ready already (no
signal will come for what arrived before) kicks at once.

The program may set a SIGIO handler of its own while a loop signals: a
timer of the loop's (every ``_OWNER_CHECK`` seconds while signals are on)
sees that SIGIO is no longer this module's, and the loop gives the signals
up -- its fds lose ``O_ASYNC``, so the program's handler gets none of them
-- and asks again; the program's handler stays.

Signals that come often (``_RATE_WINDOW`` of them within ``_BUSY_SLICES``
time slices each) cost more than asking: the fds then lose ``O_ASYNC``, the
backend asks again, and tries signals again after a back-off that doubles
each time (``_BACKOFF`` up to ``_BACKOFF_MAX`` seconds).
"""

from __future__ import annotations

import contextvars
import fcntl
import os
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["UrgentSignals"]

_QUIET_ASKS = 32
_QUIET_HITS = 4
_RATE_WINDOW = 64
_BUSY_SLICES = 4
_BACKOFF = 1.0
_BACKOFF_MAX = 60.0
# Seconds between two looks, while a loop signals, at whether SIGIO is still
# this module's (the program may set a handler of its own): its handler
# would get the loop's signals meanwhile.
_OWNER_CHECK = 0.1
_SIGIO: Any = getattr(signal, "SIGIO", None)  # None: not on this OS
_O_ASYNC = getattr(os, "O_ASYNC", 0)
_F_SETOWN = getattr(fcntl, "F_SETOWN", None)
_F_SETOWN_EX = getattr(fcntl, "F_SETOWN_EX", 15 if sys.platform.startswith("linux") else None)
_F_OWNER_TID = 0

# The loops' signal states that are on, process-wide (the handler serves all;
# a forked child's copies are not: the kernel signals the parent's thread).
_on: list[UrgentSignals] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_on.clear)


def _on_sigio(signum: int, frame: Any) -> None:
    """SIGIO: an urgent fd may be ready."""
    for s in _on:
        s.count += 1
        if s.count >= _RATE_WINDOW:
            now = time.monotonic()
            if now - s.since < s.busy:
                s.overload = True
            s.count = 0
            s.since = now
        try:
            s._kick()
        except Exception:  # never into the code the signal interrupted
            s.pending = False  # (a loop closing meanwhile): the next signal tries again


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class UrgentSignals:
    """One loop's signal state.  *sched*: its scheduler (the time slice; the
    signals taken are counted in its statistics); *kick*: what the handler
    does for this loop; *fds*: the urgent fds now; *switched*: called with
    True when signals start, False when they stop (the backend stops or
    starts asking); *later*: the loop's ``call_later`` (the look at SIGIO's
    owner while signalled); *enabled*: the loop option ``urgent_signals``."""

    __slots__ = ("asks", "backoff", "busy", "check_h", "count", "enabled", "fds", "hits", "kick",
                 "later", "overload", "pending", "pid", "retry_at", "sched", "since", "switched")

    def __init__(self, sched: Any, kick: Callable[[], None], fds: Callable[[], Iterable[int]],
                 switched: Callable[[bool], None], later: Callable[..., Any],
                 enabled: bool = True) -> None:
        self.later = later
        self.check_h: Any = None  # the timer of the next look at SIGIO's owner
        self.sched = sched
        self.enabled = enabled
        self.kick = kick
        self.fds = fds
        self.switched = switched
        self.pid = 0  # the process whose thread owns the fds' signals (0: off)
        self.asks = self.hits = 0  # asks since the last decision
        self.retry_at = 0.0
        self.backoff = _BACKOFF
        self.count = 0  # signals in the current rate window
        self.since = 0.0  # when the window began
        self.busy = 0.0  # a window shorter than this: signals cost more than asks
        self.overload = False
        self.pending = False  # kicked, not taken yet

    def asked(self, found: bool) -> None:
        """The backend asked the urgent fds (*found*: one was ready)."""
        self.asks += 1
        if found:
            self.hits += 1
        if self.asks < _QUIET_ASKS:
            return
        quiet = self.hits <= _QUIET_HITS
        self.asks = self.hits = 0
        if quiet and not self.pid and self.enabled:
            self.start()

    def start(self) -> bool:
        """Signal the urgent fds, if this loop can (main thread, SIGIO free,
        not backing off).  Whether it does now."""
        if _SIGIO is None or not _O_ASYNC or not _main_thread():
            return False  # Python runs signal handlers in the main thread only
        now = time.monotonic()
        if now < self.retry_at:
            return False
        if not _on:
            if signal.getsignal(_SIGIO) not in (signal.SIG_DFL, _on_sigio):
                return False  # the program's own
            signal.signal(_SIGIO, _on_sigio)
        _on.append(self)
        self.pid = os.getpid()
        self.count = 0
        self.since = now
        self.busy = _RATE_WINDOW * _BUSY_SLICES * self.sched.slice
        self.overload = self.pending = False
        ready = False
        for fd in self.fds():
            ready = _set_async(fd, True) or ready
        self.switched(True)
        self._look_later()
        if ready:
            self._kick()
        return True

    def _look_later(self) -> None:
        # in a context of its own: at the default priority, whatever runs
        # now (a timer above it would stop hand-offs below it)
        self.check_h = contextvars.Context().run(self.later, _OWNER_CHECK, self._look)

    def _look(self) -> None:
        """Is SIGIO still this module's?  If the program set a handler of
        its own meanwhile, the signals stop (the fds lose O_ASYNC: that
        handler gets none of them) and the loop asks again; start() does
        not take SIGIO back while the program's handler is set."""
        self.check_h = None
        if not self.pid:
            return
        if signal.getsignal(_SIGIO) is _on_sigio:
            self._look_later()
        else:
            self.stop()

    def stop(self, backoff: bool = False) -> None:
        """Ask again instead (*backoff*: signals came too often; try them
        again later)."""
        if not self.pid:
            return
        if self.check_h is not None:
            self.check_h.cancel()
            self.check_h = None
        if self.pid == os.getpid():  # in a forked child the fds are the parent's
            for fd in self.fds():
                _set_async(fd, False)
        self.pid = 0
        if self in _on:
            _on.remove(self)
            if not _on and _main_thread() and signal.getsignal(_SIGIO) is _on_sigio:
                signal.signal(_SIGIO, signal.SIG_DFL)
        self.switched(False)
        if backoff:
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, _BACKOFF_MAX)

    def added(self, fd: int) -> None:
        """*fd* became urgent while signalled."""
        if self.pid and _set_async(fd, True):
            self._kick()  # ready already: no signal will say so

    def removed(self, fd: int, last: bool) -> None:
        """*fd* is no longer urgent (*last*: no urgent fd is left)."""
        if self.pid:
            _set_async(fd, False)
            if last:
                self.stop()

    def taken(self) -> None:
        """The backend took the kick."""
        self.pending = False
        self.sched.signals += 1
        if self.overload:
            self.overload = False
            self.stop(backoff=True)

    def _kick(self) -> None:
        if not self.pending:
            self.pending = True
            self.kick()


def _set_async(fd: int, on: bool) -> bool:
    """O_ASYNC on or off for *fd*, signals to this thread.  Whether *fd* is
    readable now (when turned on)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not on:
            if flags & _O_ASYNC:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_ASYNC)
            return False
        if _F_SETOWN_EX is not None:
            owner = struct.pack("ii", _F_OWNER_TID, threading.get_native_id())
            fcntl.fcntl(fd, _F_SETOWN_EX, owner)
        else:
            fcntl.fcntl(fd, _F_SETOWN, os.getpid())  # type: ignore[arg-type]
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_ASYNC)
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return False
