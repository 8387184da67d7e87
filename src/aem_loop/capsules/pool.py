"""CapsulePool: pre-started worker processes (AEM's capsules).

Processes: the pool forks a *zygote* when it is created (before it starts
its own thread); the zygote closes every inherited fd but its control
socket, forgets the parent's running loop and signal handlers, imports
``preload`` and then only forks capsules on request and reaps them.  A
capsule is a fork of that clean template: it starts in well under a
millisecond and holds nothing of the parent's loop, sockets or threads.

Calls travel over one socketpair per capsule (never a port): the caller
writes the request itself, in its own thread; who reads the reply depends on
the entry point, so that no call needs a helper thread:

- ``await pool.run(fn, *args)``: the event loop reads it (``add_reader``);
- ``pool.call(fn, *args)``: the calling thread reads it (blocking);
- ``pool.submit(fn, *args)`` (the Executor API, ``run_in_executor``,
  ``map``): the pool's one manager thread reads it.

The manager thread also hears the zygote report every exit status, starts
replacements, and notices capsules that die while idle.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import concurrent.futures as cf
import os
import pickle
import select
import socket
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..core.priority import PRIORITY_VAR, Priority, check_priority, current_priority
from . import _wire as w
from .errors import BrokenCapsulePool, CapsuleDied, describe, remote_error
from .lifecycle import Lifecycle
from .manager import SYNC, Call, Capsule, ManagerThread
from .zygote import adopt_prestarted, close_zygote, fork_zygote

__all__ = ["CapsuleFuture", "CapsulePool"]

_CRITICAL = int(Priority.CRITICAL)
_NORMAL = int(Priority.NORMAL)
_PRIO = PRIORITY_VAR
_BY_REFERENCE = (types.FunctionType, types.BuiltinFunctionType)
_dumps = pickle.dumps
_HDR_PACK = w.HDR.pack
_HDR_UNPACK = w.HDR.unpack_from
_RECV = w.RECV
_BIG = w.BIG
_STARTING = ("starting", "greeting")  # forked, HELLO not handled yet

# Every live pool of this process: a child forked from it (os.fork, a FORK
# event's child, multiprocessing's fork) closes their sockets at once, so
# that it cannot read or forge their replies, nor keep a pool (its zygote
# and capsules) alive after this process shut it down or died.
_POOLS: weakref.WeakSet[CapsulePool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    pools = list(_POOLS)
    _POOLS.clear()  # fds closed here may be reused: never again in this child
    for pool in pools:
        pool._aem_forked_away()


os.register_at_fork(after_in_child=_after_fork_in_child)


class CapsuleFuture(cf.Future):  # type: ignore[type-arg]
    """A submit() future; ``cancel()`` also stops a running call (the capsule is killed)."""

    _aem_call: Call | None = None

    def cancel(self) -> bool:
        call = self._aem_call
        with self._condition:
            running = self._state == "RUNNING"
            if running:
                self._state = "PENDING"  # so that Future.cancel() accepts it
        if running and call is not None:
            call.pool._abort(call)
        return super().cancel()

    def result(self, timeout: float | None = None) -> Any:
        # A thread that blocks on a running call reads its reply itself, as
        # pool.call() does, instead of waiting for the manager thread to
        # read it and wake this one (two thread hand-offs).
        call = self._aem_call
        if call is not None and self._state == "RUNNING":
            if timeout is None:
                call.pool._help(call, None)
            else:
                deadline = time.monotonic() + timeout
                call.pool._help(call, timeout)
                timeout = max(0.0, deadline - time.monotonic())
        return super().result(timeout)




class CapsulePool(ManagerThread, Lifecycle, cf.Executor):
    """A pool of pre-started worker processes; a :class:`concurrent.futures.Executor`.

    - *size*: capsules available to any call (default: CPU count).
    - *reserve*: further capsules only calls at CRITICAL priority may take,
      so that emergency handlers still get a process when the pool is busy.
    - *preload*: module names the zygote imports once, so capsules start warm.
    - *initializer(\\*initargs)*: run in each capsule when it starts; if it
      raises, the pool is broken (:class:`BrokenCapsulePool`).
    - *spin*: busy-poll window in seconds (default 100 us): a capsule that
      sent a reply polls for its next call this long before it sleeps, and
      :meth:`call` polls for its reply this long before it blocks.  Waking a
      sleeping process costs more than a small call; 0 never polls.

    Arguments and results are pickled.  A capsule that dies mid-call fails
    that call with :class:`CapsuleDied` and is replaced.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        reserve: int = 1,
        preload: Iterable[str] = (),
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        spin: float = w.SPIN,
    ) -> None:
        if size is None:
            size = os.cpu_count() or 1
        for name, v, low in (("size", size, 1), ("reserve", reserve, 0)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {v!r}")
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        if isinstance(preload, str):
            raise TypeError("preload must be an iterable of module names, not a str")
        preload = tuple(preload)
        for mod in preload:
            if not isinstance(mod, str):
                raise TypeError(f"preload must hold module names, got {mod!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        if isinstance(spin, bool) or not isinstance(spin, (int, float)):
            raise TypeError(f"spin must be a number of seconds, not {spin!r}")
        if not 0 <= spin <= 1:  # also rejects NaN
            raise ValueError(f"spin must be between 0 and 1 s, got {spin!r}")
        self.size = size
        self.spin = float(spin)
        self.reserve = reserve
        self._lock = threading.RLock()
        self._idle: collections.deque[Capsule] = collections.deque()
        self._idle_reserve: collections.deque[Capsule] = collections.deque()
        self._backlog: collections.deque[Call] = collections.deque()
        self._capsules: dict[int, Capsule] = {}  # id -> capsule
        self._by_pid: dict[int, Capsule] = {}
        self._by_fd: dict[int, Capsule] = {}
        self._exits: dict[int, int] = {}  # pid -> wait status (reported, not yet used)
        self._exit_waiters: dict[int, list[Callable[[int | None], None]]] = {}
        self._inflight = 0
        self._fn_cache: dict[Any, bytes] = {}
        self._ready_waiters = 0
        self._closing = False
        self._broken: str | None = None
        self._idle_cond = threading.Condition(self._lock)
        self.started = 0  # capsules started so far (statistics)
        self.died = 0
        # The zygote: one forked early by prestart() with the same preload,
        # or forked now, before this pool starts its thread.
        zp, pid = adopt_prestarted(preload)
        if zp is not None and initializer is not None:
            try:
                zp.send(b"I" + w.dumps((initializer, initargs)))
            except Exception as exc:
                close_zygote(zp, pid)
                raise TypeError(
                    f"initializer must be picklable to reach a prestarted zygote: {exc}"
                ) from exc
        if zp is None:
            zp, pid = fork_zygote(preload, initializer, initargs)
        self._zsock = zp
        self._zpid = pid
        self._owner_pid = os.getpid()
        self._zlock = threading.Lock()
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ep.register(zp.fileno(), select.EPOLLIN)
        self._ep.register(self._wake_r, select.EPOLLIN)
        # One capsule now (the zygote's warm spare, when it has one), asked
        # for before the rest of the set-up so that the hand-over overlaps
        # it; the others when it is ready, so that the zygote's forks for
        # them do not compete with the first call for this machine's few cores.
        self._deferred = [i >= size for i in range(1, size + reserve)]  # reserve flags
        self._spawn_rest = False  # set with _wake(): the manager requests the deferred
        self._spawn(reserve=False)
        # The manager thread is started with _thread, which does not wait
        # for it to be scheduled (threading.Thread.start() does: ~1 ms here);
        # shutdown() joins it through _manager_done.
        self._manager_done = threading.Event()
        self._manager_ident = 0
        self._finalizer = weakref.finalize(
            self, _emergency_teardown, self._zsock, self._zpid, self._capsules
        )
        self._manager_ident = _thread.start_new_thread(self._manage, ())
        _POOLS.add(self)

    def _aem_forked_away(self) -> None:
        """In a child forked from this pool's process: close the pool's fds
        (no shutdown protocol: the pool is the parent's) and refuse calls.
        Runs in the child's only thread, without locks (one may be held by
        a thread that does not exist here)."""
        self._broken = (f"this CapsulePool belongs to process {self._owner_pid}; "
                        f"process {os.getpid()} was forked from it")
        self._finalizer.detach()  # the parent's zygote and capsules are not ours
        for cap in list(self._capsules.values()):
            cap.sock.close()
        self._zsock.close()
        if not self._ep.closed:  # else shutdown() closed the wake pipe too
            self._ep.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- public API ---------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> CapsuleFuture:
        """Run ``fn(*args, **kwargs)`` in a capsule; a :class:`CapsuleFuture`."""
        fut = CapsuleFuture()
        call = Call(self, "thread", fn, b"", current_priority(), fut=fut)
        fut._aem_call = call
        try:
            call.payload = self._payload(fn, args, kwargs, None)
        except Exception as exc:
            fut.set_exception(exc)
            return fut
        with self._lock:
            self._check_open()
            self._inflight += 1
            cap = self._take(call.priority)
            if cap is None and not self._backlog and not self._ready_waiters:
                # a capsule still starting: the request goes now, and the
                # manager reads the HELLO and then the reply (first calls
                # of a new pool do not wait for the HELLO to be handled)
                cap = self._starting(call.priority)
                if cap is not None:
                    fut.set_running_or_notify_cancel()  # a new future: running
                    call.running = True
                    call.capsule = cap
                    cap.call = call
            if cap is None:
                self._backlog.append(call)
                return fut
        if call.running:
            try:
                cap.sock.sendall(call.payload)
            except OSError:
                pass  # it died: the manager sees EOF
        else:
            self._dispatch(cap, call)
        return fut

    def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None,
             priority: int | None = None, _claim: bool = True) -> Any:
        """Run ``fn(*args)`` in a capsule and wait here for the result.

        The calling thread reads the reply itself (the fastest path).  On
        *timeout* the capsule is killed and replaced and TimeoutError raised.
        """
        prio = _PRIO.get(_NORMAL) if priority is None else check_priority(priority)
        fnb = self._fn_cache.get(fn) if type(fn) in _BY_REFERENCE else None
        big = None  # a big request body, sent apart from its header
        if fnb is None:
            payload = self._payload(fn, args, None, None)
        else:  # the usual case, inlined: a known function
            try:
                body = _dumps((fnb, args, None, None), 5)
            except Exception:
                payload = self._payload(fn, args, None, None)  # raises the clear error
            else:
                if len(body) < _BIG:
                    payload = _HDR_PACK(len(body)) + body
                else:
                    payload = big = body
        with self._lock:
            if self._closing or self._broken:
                self._check_open()
            cap = self._take(prio)
            if cap is None and _claim and not self._backlog and not self._ready_waiters:
                cap = self._claim(prio)
            if cap is None:
                # None idle: wait here for one (this thread then reads the
                # reply itself; no hand-off through the manager thread).
                deadline = None if timeout is None else time.monotonic() + timeout
                self._ready_waiters += 1
                try:
                    while cap is None:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError(
                                f"{describe(fn)} did not get a capsule in {timeout} s")
                        self._idle_cond.wait(left)
                        self._check_open()
                        if not self._backlog:
                            cap = self._take(prio)
                finally:
                    self._ready_waiters -= 1
                if deadline is not None:
                    timeout = max(0.0, deadline - time.monotonic())
            self._inflight += 1
            cap.call = SYNC
            cap.state = "busy"
        sock = cap.sock
        raw: Any
        try:
            if big is not None:
                w.send_frame(sock, big)
            else:
                sock.sendall(payload)
            if not cap.pid:  # claimed while starting: its HELLO comes first
                t0 = time.monotonic()
                if not self._read_hello(cap, timeout):
                    # it died before it read anything: the request never ran
                    return self.call(fn, *args, timeout=timeout, priority=priority,
                                     _claim=False)
                if timeout is not None:
                    timeout = max(0.0, timeout - (time.monotonic() - t0))
            ahead = cap.reader.frames
            if ahead:  # the reply came with the HELLO
                raw = ahead.pop(0)
            elif timeout is None:
                raw = self._read_reply(cap)
            else:
                raw = w.recv_frame_blocking(sock, cap.reader, timeout)
        except TimeoutError:
            self._kill(cap)
            self._lost(cap, SYNC)
            raise TimeoutError(f"{describe(fn)} did not finish in {timeout} s") from None
        except OSError:
            raw = None
        if raw is None:
            self._lost(cap, SYNC)
            raise CapsuleDied(cap.pid, self._wait_status(cap.pid), describe(fn))
        return self._finish(cap, fn, raw)

    async def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None,
                  priority: int | None = None, _event: Any = None,
                  _capsule: Capsule | None = None,
                  _on_capsule: Callable[[Capsule], None] | None = None) -> Any:
        """``await pool.run(fn, *args)``: run ``fn(*args)`` in a capsule.

        The running loop reads the reply (no helper thread).  Cancelling the
        awaiting task, or *timeout*, kills the capsule and replaces it.
        """
        loop = asyncio.get_running_loop()
        prio = current_priority() if priority is None else check_priority(priority)
        payload = self._payload(fn, args, None, _event)
        call = Call(self, "loop", fn, payload, prio, loop=loop, event=_event)
        cap = _capsule
        if cap is None:
            cap = await self._acquire(call)
        else:
            with self._lock:
                self._inflight += 1
        call.capsule = cap
        cap.call = call
        cap.state = "busy"
        if _on_capsule is not None:
            _on_capsule(cap)
        got: asyncio.Future[bytes | None] = loop.create_future()

        def readable() -> None:
            try:
                data = cap.sock.recv(_RECV)  # readable: does not block
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(cap.fd)
                if not got.done():
                    got.set_result(None)
                return
            frames = cap.reader.feed(data)
            if frames:
                loop.remove_reader(cap.fd)
                if not got.done():
                    got.set_result(frames[0])

        try:
            if len(payload) <= 65536:
                cap.sock.sendall(payload)  # a blocking socket, and room for it
            else:
                cap.sock.setblocking(False)
                try:
                    await loop.sock_sendall(cap.sock, payload)
                finally:
                    cap.sock.setblocking(True)
            loop.add_reader(cap.fd, readable)
            if timeout is None:
                raw = await got
            else:
                raw = await asyncio.wait_for(got, timeout)
        except (asyncio.CancelledError, TimeoutError, GeneratorExit) as exc:
            # Cancelled, timed out, or closed without an answer (its loop was
            # closed with this call pending and the task dropped): nobody will
            # read the reply; the capsule is killed and replaced.
            try:
                loop.remove_reader(cap.fd)
            except RuntimeError:  # a closed loop (GeneratorExit) may refuse
                pass
            self._kill(cap)
            self._lost(cap, call)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"{describe(fn)} did not finish in {timeout} s") from None
            raise
        except OSError:
            raw = None
        if raw is None:
            self._lost(cap, call)
            status = await self._await_status(loop, cap.pid)
            raise CapsuleDied(cap.pid, status, describe(fn))
        return self._finish(cap, fn, raw)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; when the running ones are done, every process exits.

        With *wait*, return only when the zygote and every capsule are gone
        (reaped: no zombie); called on the thread of a running loop whose
        ``run()`` calls are in flight, it cannot wait for them (that loop
        reads their replies): it returns at once, and the calls finish and
        the processes exit when the loop runs again.  *cancel_futures*
        cancels calls not started yet.
        In a process forked from the pool's, nothing to do (its fds were
        closed at the fork; the pool is the parent's).
        """
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            self._closing = True
            if cancel_futures:
                for call in list(self._backlog):
                    if call.kind == "thread" and call.fut.cancel():
                        self._backlog.remove(call)
                        self._inflight -= 1
            self._idle_cond.notify_all()
        self._wake()
        if wait and threading.get_ident() != self._manager_ident:
            if self._own_loop_calls():
                # The loop running on this thread reads the replies of its
                # run() calls, and it is blocked here: waiting would never
                # end.  Those calls finish when the loop runs again; then
                # the processes exit (as with wait=False).
                return
            self._manager_done.wait()

    def _own_loop_calls(self) -> bool:
        """Whether a run() call of the loop running on this thread is in flight."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return False
        with self._lock:
            calls = [c.call for c in self._capsules.values()] + list(self._backlog)
        return any(c is not None and c is not SYNC and getattr(c, "loop", None) is loop
                   for c in calls)

    async def _dedicate(self, prio: int) -> Capsule:
        """Take a capsule out of circulation for a KEEPALIVE event; replace it."""
        loop = asyncio.get_running_loop()
        cap = await self._acquire(Call(self, "loop", None, b"", prio, loop=loop))
        with self._lock:
            self._inflight -= 1  # dedicated: no call of the pool's in flight
            cap.dedicated = True
            cap.state = "idle"
            reserve = cap.reserve
            cap.reserve = False
        self._spawn(reserve=reserve)  # the pool keeps its size
        return cap

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every capsule has started (none starting); False on timeout."""
        with self._idle_cond:
            self._ready_waiters += 1
            try:
                return self._idle_cond.wait_for(
                    lambda: self._broken is not None or (not self._deferred and not any(
                        c.state in _STARTING for c in self._capsules.values())),
                    timeout,
                )
            finally:
                self._ready_waiters -= 1

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {
                "size": self.size,
                "reserve": self.reserve,
                "idle": len(self._idle),
                "idle_reserve": len(self._idle_reserve),
                "busy": sum(1 for c in self._capsules.values()
                            if c.state == "busy" and not c.dedicated),
                "dedicated": sum(1 for c in self._capsules.values() if c.dedicated),
                "starting": sum(1 for c in self._capsules.values() if c.state in _STARTING),
                "queued": len(self._backlog),
                "started": self.started,
                "died": self.died,
            }

    def pids(self) -> list[int]:
        """Process ids of the live capsules (not the zygote)."""
        with self._lock:
            return [c.pid for c in self._capsules.values() if c.pid and c.state != "dead"]

    @property
    def zygote_pid(self) -> int:
        return self._zpid

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<CapsulePool size={self.size} reserve={self.reserve} {state}>"

    # -- taking and giving back capsules ----------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("cannot schedule new calls after shutdown()")
        if self._broken:
            raise BrokenCapsulePool(self._broken)

    async def _acquire(self, call: Call) -> Capsule:
        """A capsule for a loop-path *call* (run, KEEPALIVE): an idle one, or
        the next one given back.  Counted in flight from here on."""
        with self._lock:
            self._check_open()
            self._inflight += 1
            cap = self._take(call.priority)
            if cap is None:
                call.fut = call.loop.create_future()
                self._backlog.append(call)
        if cap is None:
            try:
                cap = await call.fut
            except asyncio.CancelledError:
                self._abort_waiting(call)
                raise
        return cap

    def _take(self, prio: int) -> Capsule | None:
        """An idle capsule for a call at *prio* (lock held), or None.

        The one released last: it may still be polling for work (*spin*) and
        its caches are warm; the others sleep.
        """
        if self._idle:
            return self._idle.pop()
        if prio >= _CRITICAL and self._idle_reserve:
            return self._idle_reserve.pop()
        return None

    def _help(self, call: Call, timeout: float | None) -> None:
        """Read the reply of the running submit() *call* in this thread and
        settle its future, unless the manager thread has begun reading it
        (then the manager settles it, as usual).  With a *timeout*, a reply
        that has not begun to arrive by then is left to the manager."""
        with self._lock:
            cap = call.capsule
            if (cap is None or cap.call is not call or cap.state != "busy" or cap.helper
                    or cap.reading or cap.reader.buf or cap.reader.frames):
                return
            cap.helper = True
            self._ep_unregister(cap)
        sock = cap.sock
        try:
            if timeout is None:
                raw = self._read_reply(cap)
            elif select.select([sock], [], [], timeout)[0]:
                raw = w.frame_from(sock, cap.rbuf, sock.recv_into(cap.rbuf), cap.reader)
            else:  # not yet: the manager reads it when it comes
                with self._lock:
                    cap.helper = False
                    if cap.call is call and cap.state == "busy":
                        self._ep.register(cap.fd, select.EPOLLIN)
                return
        except (OSError, ValueError):  # closed by cancel(), which killed it
            raw = None
        cap.helper = False  # (its fd is no longer registered: the manager cannot see it)
        if raw is None:
            self._lost(cap, call)
            self._thread_call_died(cap, call)
        else:
            self._thread_call_done(cap, call, raw)

    def _read_reply(self, cap: Capsule) -> Any:
        """The next reply of *cap*, read in this thread (polling up to *spin*
        first); None at EOF."""
        sock, rbuf = cap.sock, cap.rbuf
        return w.frame_from(sock, rbuf, w.recv_into_spinning(sock, rbuf, self.spin), cap.reader)

    def _claim(self, prio: int) -> Capsule | None:
        """A starting capsule for pool.call() (lock held), or None.

        Nobody waits for it (checked by the caller), so instead of waiting
        for the manager thread to read its HELLO and hand it over, the caller
        sends its request at once and reads the HELLO before the reply: the
        first call of a new pool saves two hand-offs between processes.
        """
        cap = self._starting(prio)
        if cap is not None:
            cap.state = "busy"  # the manager no longer reads it (see _capsule_readable)
            cap.call = SYNC
            self._ep_unregister(cap)
        return cap

    def _starting(self, prio: int) -> Capsule | None:
        """A starting capsule no call has taken yet, usable at *prio* (lock held)."""
        for cap in self._capsules.values():
            if (cap.state == "starting" and cap.call is None
                    and (not cap.reserve or prio >= _CRITICAL)):
                return cap
        return None

    def _read_hello(self, cap: Capsule, timeout: float | None) -> bool:
        """Read the HELLO of a claimed capsule; False if it died first.

        A reply that came in the same read waits in ``cap.reader.frames``.
        Raises BrokenCapsulePool if the pool's initializer raised in it, and
        TimeoutError (call() then closes the capsule's socket: without its pid
        it cannot be killed; it exits once it has run the request).
        """
        reader = cap.reader
        raw = w.recv_frame_blocking(cap.sock, reader, timeout)  # TimeoutError: see call()
        if raw is None:
            self._lost(cap, SYNC)  # counts this call out; the retry counts itself in
            return False
        _, status, payload = pickle.loads(raw)
        if status != w.HELLO:  # the initializer raised
            self._set_broken("a capsule's initializer raised:\n" + payload[1])
            self._lost(cap, SYNC)
            self._check_open()
        self._greeted(cap, payload)  # if it is already gone, EOF comes next
        with self._lock:
            if self._deferred:  # the first capsule is up: the manager requests the rest
                self._spawn_rest = True
                self._wake()
        return True

    def _release(self, cap: Capsule) -> None:
        """*cap* is free again: the next waiting call that may use it gets it."""
        nxt = None
        with self._lock:
            cap.call = None
            self._idle_cond.notify_all()
            if cap.dedicated:
                cap.state = "idle"
                return
            for call in self._backlog:
                if not cap.reserve or call.priority >= _CRITICAL:
                    nxt = call
                    self._backlog.remove(call)
                    break
            if nxt is None:
                cap.state = "idle"
                (self._idle_reserve if cap.reserve else self._idle).append(cap)
                return
            cap.state = "busy"
        self._dispatch(cap, nxt)

    def _dispatch(self, cap: Capsule, call: Call) -> None:
        if call.kind == "loop":  # the waiting coroutine sends it itself
            loop = call.loop

            def hand() -> None:
                if call.fut.done():  # cancelled meanwhile
                    with self._lock:
                        self._inflight -= 1
                    self._release(cap)
                else:
                    call.fut.set_result(cap)

            cap.state = "busy"
            cap.call = call  # its loop's: see _own_loop_calls
            try:
                loop.call_soon_threadsafe(hand)
            except RuntimeError:  # its loop is closed
                with self._lock:
                    self._inflight -= 1
                self._release(cap)
            return
        fut = call.fut
        if not call.running:
            if not fut.set_running_or_notify_cancel():
                with self._lock:
                    self._inflight -= 1
                self._release(cap)
                return
            call.running = True
        call.capsule = cap
        cap.call = call
        cap.state = "busy"
        self._ep.register(cap.fd, select.EPOLLIN)  # the manager reads the reply
        try:
            cap.sock.sendall(call.payload)
        except OSError:
            pass  # it died: the manager sees EOF

    def _finish(self, cap: Capsule, fn: Any, raw: Any) -> Any:
        """Decode a reply, give the capsule back, return or raise the result."""
        _, status, payload = pickle.loads(raw)
        with self._lock:
            self._inflight -= 1
            fast = not self._backlog and not cap.dedicated
            if fast:  # nobody waits for a capsule: straight back to idle
                cap.call = None
                cap.state = "idle"
                (self._idle_reserve if cap.reserve else self._idle).append(cap)
                if self._ready_waiters:
                    self._idle_cond.notify_all()
        if not fast:
            self._release(cap)
        if status == w.OK:
            return payload
        raise remote_error(payload, describe(fn))

    def _payload(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 event: Any) -> bytes:
        """The request frame.  The function goes as its own pickle, cached on
        both sides (a by-reference pickle of a function costs a module and
        attribute lookup at each end)."""
        try:
            fnb = self._fn_cache[fn]
        except (KeyError, TypeError):
            if not callable(fn):
                raise TypeError(f"fn must be callable, got {fn!r}") from None
            try:
                fnb = w.dumps(fn)
            except Exception as exc:
                raise TypeError(
                    f"cannot send {describe(fn)} to a capsule: {exc}") from exc
            # Only plain functions pickle by reference (a callable object
            # pickles its state, which may change between calls).
            if isinstance(fn, _BY_REFERENCE):
                if len(self._fn_cache) > 256:
                    self._fn_cache.clear()
                self._fn_cache[fn] = fnb
        try:
            return w.frame(w.dumps((fnb, args, kwargs, event)))
        except Exception as exc:
            raise TypeError(
                f"cannot send the arguments of {describe(fn)} to a capsule: {exc}"
            ) from exc

    def _abort_waiting(self, call: Call) -> None:
        """A run() call was cancelled while it waited for a capsule."""
        with self._lock:
            try:
                self._backlog.remove(call)
            except ValueError:
                return  # a capsule was handed over meanwhile: hand() gives it back
            self._inflight -= 1

    def _abort(self, call: Call) -> None:
        """Stop a running submit() call: kill its capsule (CapsuleFuture.cancel)."""
        cap = call.capsule
        if cap is not None and cap.call is call:
            self._kill(cap)
            self._lost(cap, call)


def _emergency_teardown(zsock: socket.socket, zpid: int, capsules: dict[int, Capsule]) -> None:
    """The pool was garbage collected or the interpreter exits unshut: no orphans."""
    for cap in list(capsules.values()):
        try:
            cap.sock.close()
        except OSError:
            pass
    try:
        zsock.close()
    except OSError:
        pass
    try:
        os.waitpid(zpid, 0)
    except ChildProcessError:
        pass
