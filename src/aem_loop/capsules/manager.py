"""The pool's manager thread, and the records it shares with the pool.

One thread per pool reads what no caller reads itself: the zygote's exit
reports (every capsule's wait status), the HELLO of starting capsules, the
replies of submit() calls; it starts replacements and notices capsules that
die while idle; at the end it tears everything down.  CapsulePool mixes it in.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import socket
from typing import TYPE_CHECKING, Any

from . import _wire as w
from .errors import BrokenCapsulePool, CapsuleDied, describe

if TYPE_CHECKING:
    from .pool import CapsulePool

__all__ = ["SYNC", "Call", "Capsule", "ManagerThread"]

SYNC = object()  # cap.call while pool.call() runs on it (the caller reads)


class Capsule:
    __slots__ = ("call", "dedicated", "fd", "helper", "id", "pid", "rbuf", "reader", "reading",
                 "reserve", "sock", "state")

    def __init__(self, cid: int, sock: socket.socket, reserve: bool) -> None:
        self.id = cid
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = 0
        self.reader = w.Reader()
        self.rbuf = bytearray(w.RBUF)  # whoever reads its replies reads into it (not run())
        self.reading = False  # the manager thread is reading a reply
        self.helper = False  # the thread waiting on a submit() future reads it
        self.state = "starting"  # greeting (the manager reads its HELLO), idle, busy, dead
        self.call: Any = None  # a Call, SYNC, or None
        self.reserve = reserve
        self.dedicated = False


class Call:
    __slots__ = ("capsule", "event", "fn", "fut", "kind", "loop", "payload", "pool", "priority",
                 "running")

    def __init__(self, pool: CapsulePool, kind: str, fn: Any, payload: bytes, priority: int,
                 fut: Any = None, loop: Any = None, event: Any = None) -> None:
        self.pool = pool
        self.kind = kind  # "thread" (submit), "loop" (run), "sync" (call)
        self.fn = fn
        self.payload = payload
        self.priority = priority
        self.fut = fut
        self.loop = loop
        self.capsule: Capsule | None = None
        self.event = event
        self.running = False  # a thread call whose future is marked running


class ManagerThread:
    """The methods of CapsulePool that run on its manager thread.

    A mixin: the state it uses is CapsulePool's (see CapsulePool.__init__);
    mypy is told so in pyproject.toml.
    """

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _manage(self) -> None:
        zfd = self._zsock.fileno()
        try:
            while True:
                with self._lock:
                    if self._closing and self._inflight <= 0:
                        break
                try:
                    events = self._ep.poll(1.0)
                except InterruptedError:
                    continue
                for fd, _ in events:
                    if fd == zfd:
                        self._zygote_readable()
                    elif fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        if self._spawn_rest:
                            self._spawn_rest = False
                            self._spawn_deferred()
                    else:
                        cap = self._by_fd.get(fd)
                        if cap is not None:
                            self._capsule_readable(cap)
        finally:
            try:
                self._teardown()
            finally:
                self._manager_done.set()

    def _zygote_readable(self) -> None:
        while True:
            try:
                msg = self._zsock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:
                try:
                    self._ep.unregister(self._zsock.fileno())
                except (OSError, ValueError):
                    pass
                self._set_broken("the pool's zygote died")
                self._flush_exit_waiters()
                return
            _, pid, status = w.EXIT.unpack(msg)
            with self._lock:
                waiters = self._exit_waiters.pop(pid, None)
                if waiters is None:
                    self._exits[pid] = status
                cap = self._by_pid.pop(pid, None)
            for cb in waiters or ():
                cb(status)
            if cap is not None and cap.state in ("idle", "starting", "greeting"):
                # died with no call in it: forget and replace it
                with self._lock:
                    self._exits.pop(pid, None)
                self._lost(cap, None)

    def _capsule_readable(self, cap: Capsule) -> None:
        if cap.state == "starting":
            # pool.call() may claim a starting capsule and read its HELLO
            # itself: deciding who reads it is done under the lock.
            with self._lock:
                if cap.state != "starting":
                    return
                cap.state = "greeting"
        elif cap.state != "greeting":
            # Only submit() replies are read here.  The thread waiting on
            # the future may read it itself (CapsuleFuture.result): who reads
            # is decided under the lock, and a reply this thread has begun
            # stays its own.  Readiness reported before another reader took
            # the reply (or the capsule went on to a call() or run()) is
            # stale: left alone.
            with self._lock:
                call = cap.call
                if cap.helper or not isinstance(call, Call) or call.kind != "thread":
                    return
                cap.reading = True
        try:
            self._read_capsule(cap)
        finally:
            cap.reading = False

    def _read_capsule(self, cap: Capsule) -> None:
        # Into the capsule's buffer, as pool.call() reads (the rest of a big
        # frame follows at once: the capsule sends a frame in one sendmsg).
        rbuf = cap.rbuf
        try:
            frames = w.frames_from(cap.sock, rbuf,
                                   cap.sock.recv_into(rbuf, 0, socket.MSG_DONTWAIT), cap.reader)
        except BlockingIOError:
            return
        except OSError:
            frames = None
        if frames is None:
            call = cap.call
            self._ep_unregister(cap)
            if cap.state == "greeting":
                self._lost(cap, None)
                if isinstance(call, Call):  # it died before it read the request
                    self._redispatch(call)
                return
            self._lost(cap, call)
            if isinstance(call, Call) and call.kind == "thread":
                self._thread_call_died(cap, call)
            return
        for raw in frames:
            if cap.state == "greeting":
                _, status, payload = pickle.loads(raw)
                call = cap.call
                if status == w.HELLO and isinstance(call, Call):
                    # a submit() sent its request before this HELLO: the
                    # reply comes next (perhaps in this very read)
                    self._greeted(cap, payload)
                    cap.state = "busy"
                    if self._deferred:
                        self._spawn_deferred()
                    continue
                if status == w.HELLO:
                    gone = self._greeted(cap, payload)
                    self._ep_unregister(cap)
                    if gone:  # exited already; nobody waits for its status
                        with self._lock:
                            self._exits.pop(payload, None)
                        self._lost(cap, None)
                    else:
                        self._release(cap)
                        if self._deferred:
                            self._spawn_deferred()
                else:  # the initializer raised
                    self._ep_unregister(cap)
                    self._set_broken(
                        "a capsule's initializer raised:\n" + payload[1]
                    )
                    self._lost(cap, None)
                    if isinstance(call, Call):  # a submit() sent before the HELLO
                        self._fail(call, BrokenCapsulePool(self._broken or "broken"))
                continue
            call = cap.call
            self._ep_unregister(cap)
            if isinstance(call, Call) and call.kind == "thread":
                self._thread_call_done(cap, call, raw)

    def _greeted(self, cap: Capsule, pid: int) -> bool:
        """*cap* said HELLO as *pid*: learn it; True if its exit is already
        reported (then it is not mapped: no exit report will come again)."""
        with self._lock:
            cap.pid = pid
            gone = pid in self._exits
            if not gone:
                self._by_pid[pid] = cap
        return gone

    def _redispatch(self, call: Call) -> None:
        """A submit() call whose capsule died before reading it goes to the
        next capsule (it never ran)."""
        with self._lock:
            broken = self._broken
            if call.fut.done():  # cancelled meanwhile
                self._inflight -= 1
                return
            cap = None if broken else self._take(call.priority)
            if cap is None and not broken:
                self._backlog.appendleft(call)
                return
        if cap is None:
            self._fail(call, BrokenCapsulePool(broken or "the pool was shut down"))
        else:
            self._dispatch(cap, call)

    def _thread_call_done(self, cap: Capsule, call: Call, raw: Any) -> None:
        """The reply of a submit() call: settle its future."""
        fut = call.fut
        try:
            result = self._finish(cap, call.fn, raw)
        except BaseException as exc:
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except cf.InvalidStateError:
                    pass
        else:
            if not fut.done():
                try:
                    fut.set_result(result)
                except cf.InvalidStateError:
                    pass

    def _thread_call_died(self, cap: Capsule, call: Call) -> None:
        """The capsule of a submit() call died (it is forgotten): fail the
        future with CapsuleDied once the zygote reports the exit status."""
        pid, fn, fut = cap.pid, call.fn, call.fut

        def report(status: int | None) -> None:
            if not fut.done():
                try:
                    fut.set_exception(CapsuleDied(pid, status, describe(fn)))
                except cf.InvalidStateError:
                    pass

        self._on_exit(pid, report)

    def _ep_unregister(self, cap: Capsule) -> None:
        try:
            self._ep.unregister(cap.fd)
        except (OSError, ValueError):
            pass

    def _flush_exit_waiters(self) -> None:
        with self._lock:
            waiters = self._exit_waiters
            self._exit_waiters = {}
        for cbs in waiters.values():
            for cb in cbs:
                cb(None)

    def _teardown(self) -> None:
        """Close every capsule and the zygote; reap the zygote (it reaps the rest)."""
        with self._lock:
            caps = list(self._capsules.values())
            self._capsules.clear()
            self._idle.clear()
            self._idle_reserve.clear()
            self._broken = self._broken or "the pool was shut down"
            backlog = list(self._backlog)
            self._backlog.clear()
        for call in backlog:
            self._fail(call, BrokenCapsulePool("the pool was shut down"))
        for cap in caps:
            cap.state = "dead"
            cap.sock.close()
        self._zsock.close()  # EOF: the zygote stops its children and exits
        try:
            os.waitpid(self._zpid, 0)
        except ChildProcessError:
            pass
        self._flush_exit_waiters()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._finalizer.detach()
