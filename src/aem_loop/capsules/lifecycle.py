"""Deaths, replacements and exit statuses of a pool's capsules.

CapsulePool mixes it in, as it does ManagerThread: the state these methods
use is the pool's (see CapsulePool.__init__); mypy is told so in
pyproject.toml.  Any thread may call them (they take the pool's lock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import select
import signal
import socket
import threading
from collections.abc import Callable

from . import _wire as w
from .errors import BrokenCapsulePool
from .manager import Call, Capsule

__all__ = ["Lifecycle"]

_STATUS_WAIT = 5.0  # seconds to wait for the zygote's report of a death
_ids = itertools.count(1)


def _ignore(status: int | None) -> None:
    pass


class Lifecycle:
    """The methods of CapsulePool that start, forget and replace capsules."""

    _broken: str | None  # why the pool is broken (CapsulePool.__init__ sets it)

    def _retire(self, cap: Capsule) -> None:
        """A dedicated capsule is let go: it exits (EOF) and the zygote reaps it."""
        with self._lock:
            if cap.state == "dead":
                return
            cap.state = "dead"
            self._forget(cap)
            if cap.pid:
                self._on_exit(cap.pid, _ignore)

    def _kill(self, cap: Capsule) -> None:
        if cap.pid:
            try:
                os.kill(cap.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._on_exit(cap.pid, _ignore)  # nobody needs its status

    def _lost(self, cap: Capsule, call: object) -> None:
        """*cap* died or was killed while running *call*: forget it, replace it."""
        with self._lock:
            if cap.state == "dead":
                return
            cap.state = "dead"
            cap.call = None
            self.died += 1
            if call is not None:
                self._inflight -= 1
            self._forget(cap)
            replace = not self._closing and not cap.dedicated and not self._broken
            self._idle_cond.notify_all()
        if replace:
            self._spawn(reserve=cap.reserve)
        self._wake()

    def _forget(self, cap: Capsule) -> None:
        self._capsules.pop(cap.id, None)
        self._by_fd.pop(cap.fd, None)
        try:
            self._idle.remove(cap)
        except ValueError:
            pass
        try:
            self._idle_reserve.remove(cap)
        except ValueError:
            pass
        self._ep_unregister(cap)
        cap.sock.close()

    def _wait_status(self, pid: int) -> int | None:
        """The zygote's report of *pid*'s exit (blocking, bounded)."""
        done = threading.Event()
        box: list[int | None] = [None]

        def got(status: int | None) -> None:
            box[0] = status
            done.set()

        self._on_exit(pid, got)
        done.wait(_STATUS_WAIT)
        return box[0]

    async def _await_status(self, loop: asyncio.AbstractEventLoop, pid: int) -> int | None:
        fut: asyncio.Future[int | None] = loop.create_future()

        def got(status: int | None) -> None:
            def put() -> None:
                if not fut.done():
                    fut.set_result(status)

            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:
                pass

        self._on_exit(pid, got)
        try:
            return await asyncio.wait_for(fut, _STATUS_WAIT)
        except TimeoutError:
            return None

    def _on_exit(self, pid: int, cb: Callable[[int | None], None]) -> None:
        with self._lock:
            if pid in self._exits:
                status: int | None = self._exits.pop(pid)
            elif self._broken and self._manager_done.is_set():
                status = None
            else:
                self._exit_waiters.setdefault(pid, []).append(cb)
                return
        cb(status)

    def _spawn_deferred(self) -> None:
        """Request the capsules held back at creation (the first one is ready).

        Each leaves the list only once it is registered as starting, so that
        wait_ready() never sees a moment with neither.
        """
        while True:
            with self._lock:
                if not self._deferred or self._broken or self._closing:
                    self._deferred = []
                    return
                reserve = self._deferred[0]
            self._spawn(reserve=reserve)
            with self._lock:
                del self._deferred[0]

    def _spawn(self, *, reserve: bool) -> None:
        a, b = socket.socketpair()
        cap = Capsule(next(_ids), a, reserve)
        with self._lock:
            self._capsules[cap.id] = cap
            self._by_fd[cap.fd] = cap
            self.started += 1
        try:
            with self._zlock:
                socket.send_fds(self._zsock, [w.SPAWN.pack(b"S", cap.id, self.spin)], [b.fileno()])
        except OSError as exc:
            self._set_broken(f"the pool's zygote is gone ({exc})")
        finally:
            b.close()
        self._ep.register(cap.fd, select.EPOLLIN)  # the manager reads HELLO

    def _set_broken(self, why: str) -> None:
        with self._lock:
            if self._broken:
                return
            self._broken = why
            backlog = list(self._backlog)
            self._backlog.clear()
            self._idle_cond.notify_all()
        for call in backlog:
            self._fail(call, BrokenCapsulePool(why))

    def _fail(self, call: Call, exc: BaseException) -> None:
        with self._lock:
            self._inflight -= 1
        if call.kind == "loop":
            def put() -> None:
                if not call.fut.done():
                    call.fut.set_exception(exc)

            try:
                call.loop.call_soon_threadsafe(put)
            except RuntimeError:
                pass
        elif call.fut is not None:
            try:
                if call.fut.running() or call.fut.set_running_or_notify_cancel():
                    call.fut.set_exception(exc)
            except (cf.InvalidStateError, RuntimeError):
                pass
