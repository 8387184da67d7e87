"""Cloner events: a handler that runs in another process when activated.

AEM's cloner events (EVF_FORK, EVF_CAPSULE, EVF_NOCLDWAIT, EVF_KEEPALIVE,
EVF_ONESHOT) as ``loop.cloner(handler, flags=...)`` until the event API
lands (then an event registered with these flags does the same).

- ``FORK``: fork now; the child sees the parent's state at that moment
  (fork() semantics), runs ``handler(*args)`` and exits; its result comes
  back pickled over a pipe.
- ``CAPSULE``: run in a capsule taken from a :class:`CapsulePool` (a clean,
  pre-started process: microseconds instead of a fork).
- ``NOCLDWAIT``: fire and forget: ``activate()`` returns the
  :class:`ChildProcess` at once; the child is reaped for you (a forked one
  through a pidfd on the loop, a capsule goes back to its pool); a failure
  goes to the loop's exception handler.
- ``KEEPALIVE`` (with CAPSULE): the first activation takes a capsule out of
  the pool and keeps it dedicated: every further activation of this
  registration runs there, in order (e.g. a worker with its own loop and
  state); ``close()`` lets it go.
- ``ONESHOT``: the registration ends after one activation.

``event.children`` lists the processes an event created or used, and in a
child, :func:`aem_loop.capsules.current_events` lists the events it served.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..core.priority import check_priority, current_priority, priority
from . import _wire as w
from .errors import CapsuleDied, remote_error
from .pool import CapsulePool

__all__ = ["ChildProcess", "ClonerEvent", "EventFlags", "EventInfo"]


class EventFlags(enum.IntFlag):
    """Flags of a cloner event (AEM's EVF_*)."""

    ONESHOT = 1
    FORK = 2
    CAPSULE = 4
    NOCLDWAIT = 8
    KEEPALIVE = 16


EventInfo = w.EventInfo

_event_ids = itertools.count(1)


class ChildProcess:
    """A process an event activation created (FORK) or ran in (CAPSULE)."""

    def __init__(self, event: ClonerEvent, pid: int, kind: str) -> None:
        self.event = event.info
        self.pid = pid
        self.kind = kind  # "fork", "capsule" or "keepalive"
        self.started = time.monotonic()
        self.status: int | None = None  # raw wait status once reaped (fork)
        self._done: asyncio.Future[int | None] = event._loop.create_future()
        if kind != "fork":
            self._done.set_result(None)  # capsules stay with their pool

    @property
    def exitcode(self) -> int | None:
        s = self.status
        if s is None:
            return None
        return os.WEXITSTATUS(s) if os.WIFEXITED(s) else -os.WTERMSIG(s)

    def done(self) -> bool:
        return self._done.done()

    async def wait(self) -> int | None:
        """Wait until a forked child has exited and been reaped; its wait status."""
        return await asyncio.shield(self._done)

    def __repr__(self) -> str:
        if self.kind == "fork":
            state = "running" if not self.done() else w.describe_status(self.status or 0)
        else:
            state = "dedicated" if self.kind == "keepalive" else "in its pool"
        return f"<ChildProcess {self.kind} pid={self.pid} {state}>"


class ClonerEvent:
    """A registration whose handler runs in another process (``loop.cloner``)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[..., Any],
        *,
        flags: EventFlags = EventFlags.CAPSULE,
        pool: CapsulePool | None = None,
        priority: int | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(flags, EventFlags):
            raise TypeError(f"flags must be aem_loop.EventFlags, not {flags!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        fork = bool(flags & EventFlags.FORK)
        capsule = bool(flags & EventFlags.CAPSULE)
        if fork == capsule:
            raise ValueError("flags need exactly one of EventFlags.FORK and EventFlags.CAPSULE")
        if flags & EventFlags.KEEPALIVE and not capsule:
            raise ValueError("EventFlags.KEEPALIVE needs EventFlags.CAPSULE")
        if flags & EventFlags.KEEPALIVE and flags & EventFlags.ONESHOT:
            raise ValueError("EventFlags.KEEPALIVE and EventFlags.ONESHOT contradict each other")
        if capsule:
            if pool is None:
                default = getattr(loop, "_aem_capsule_pool", None)
                if isinstance(default, CapsulePool):
                    pool = default
                else:
                    raise ValueError(
                        "EventFlags.CAPSULE needs pool= (or a CapsulePool as the "
                        "loop's default executor)"
                    )
            elif not isinstance(pool, CapsulePool):
                raise TypeError(f"pool must be a CapsulePool, not {pool!r}")
        elif pool is not None:
            raise ValueError("pool= is for EventFlags.CAPSULE; FORK forks the caller")
        self._loop = loop
        self._handler = handler
        self.flags = flags
        self._pool = pool
        self._priority = None if priority is None else check_priority(priority)
        eid = next(_event_ids)
        label = name or getattr(handler, "__qualname__", None) or repr(handler)
        self.info = EventInfo(eid, str(label), int(flags))
        self.children: list[ChildProcess] = []
        self.activations = 0
        self._closed = False
        self._keep: Any = None  # the dedicated capsule (KEEPALIVE)
        self._keep_failed: Any = None  # a dedicated capsule that died in a call (reported)
        self._keep_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"<ClonerEvent {self.info.name!r} {self.flags!r} activations={self.activations}"
                f"{' closed' if self._closed else ''}>")

    async def activate(self, *args: Any, timeout: float | None = None) -> Any:
        """Run the handler in another process with *args*.

        Returns its result, or with NOCLDWAIT the :class:`ChildProcess` at once.
        """
        if self._closed:
            what = "ONESHOT registration was already activated" if (
                self.flags & EventFlags.ONESHOT and self.activations) else "registration is closed"
            raise RuntimeError(f"cloner event {self.info.name!r}: its {what}")
        self.activations += 1
        if self.flags & EventFlags.ONESHOT:
            self._closed = True
        prio = current_priority() if self._priority is None else self._priority
        with priority(prio):  # the replies are dispatched at the event's priority
            if self.flags & EventFlags.FORK:
                return await self._fork(args, prio, timeout)
            return await self._capsule(args, prio, timeout)

    async def close(self) -> None:
        """End the registration; a KEEPALIVE capsule leaves (it exits)."""
        self._closed = True
        async with self._keep_lock:
            if self._keep is not None:
                assert self._pool is not None
                self._pool._retire(self._keep)
                self._keep = None

    # -- capsules ------------------------------------------------------------------

    async def _capsule(self, args: tuple[Any, ...], prio: int, timeout: float | None) -> Any:
        pool = self._pool
        assert pool is not None
        if self.flags & EventFlags.KEEPALIVE:
            async with self._keep_lock:
                if self._keep is None or self._keep.state == "dead":
                    old = self._keep
                    self._keep = await pool._dedicate(prio)
                    self.children.append(ChildProcess(self, self._keep.pid, "keepalive"))
                    if old is not None and old is not self._keep_failed:
                        # died between activations: no call saw it, say it
                        self._loop.call_exception_handler({
                            "message": f"cloner event {self.info.name!r}: its KEEPALIVE "
                                       f"capsule (pid {old.pid}) died while idle; capsule "
                                       f"{self._keep.pid} serves from now on, without "
                                       f"the state the old one kept",
                            "event": self,
                        })
                coro = self._kept(pool.run(self._handler, *args, timeout=timeout,
                                           priority=prio, _event=self.info,
                                           _capsule=self._keep), self._keep)
                if self.flags & EventFlags.NOCLDWAIT:
                    self._spawn_background(coro)
                    return self.children[-1]
                return await coro

        got: asyncio.Future[ChildProcess] = self._loop.create_future()

        def on_capsule(cap: Any) -> None:
            child = ChildProcess(self, cap.pid, "capsule")
            self.children.append(child)
            if not got.done():
                got.set_result(child)

        coro = pool.run(self._handler, *args, timeout=timeout, priority=prio,
                        _event=self.info, _on_capsule=on_capsule)
        if self.flags & EventFlags.NOCLDWAIT:
            task = self._spawn_background(coro)
            task.add_done_callback(lambda t: got.cancel())
            try:
                return await asyncio.shield(got)
            except asyncio.CancelledError:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception() from None  # type: ignore[misc]
                raise
        return await coro

    async def _kept(self, coro: Any, cap: Any) -> Any:
        """A call on the dedicated capsule; a death in it is the call's to report."""
        try:
            return await coro
        except CapsuleDied:
            self._keep_failed = cap
            raise

    def _spawn_background(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._loop.call_exception_handler({
                    "message": f"cloner event {self.info.name!r}: fire-and-forget "
                               f"activation failed",
                    "exception": t.exception(),
                    "event": self,
                })

        task.add_done_callback(done)
        return task

    # -- fork --------------------------------------------------------------------------

    async def _fork(self, args: tuple[Any, ...], prio: int, timeout: float | None) -> Any:
        loop: Any = self._loop
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(rfd)
                _child_body(self._handler, args, self.info, wfd,
                            bool(self.flags & EventFlags.NOCLDWAIT))
            finally:
                os._exit(0)
        os.close(wfd)
        child = ChildProcess(self, pid, "fork")
        self.children.append(child)
        pidfd = os.pidfd_open(pid)
        forked = loop._aem_forked

        def reaped() -> None:
            if child._done.done():
                return
            forked.pop(pid, None)
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            child.status = status
            child._done.set_result(status)

        forked[pid] = pidfd
        loop.add_reader(pidfd, reaped)
        os.set_blocking(rfd, False)
        nocldwait = bool(self.flags & EventFlags.NOCLDWAIT)
        answer = self._answer(child, rfd, timeout, reaped, kill_on_cancel=not nocldwait)
        if nocldwait:
            # fire and forget: the answer is awaited in the background, and
            # a failure goes to the loop's exception handler
            self._spawn_background(answer)
            return child
        return await answer

    async def _answer(self, child: ChildProcess, rfd: int, timeout: float | None,
                      reaped: Callable[[], None], *, kill_on_cancel: bool) -> Any:
        """The forked child's frame from *rfd*, then its exit: the result, or
        its exception re-raised, or CapsuleDied.  Cancelled (the caller gave
        up, or the loop ends), the child is killed -- except a fire-and-forget
        one (*kill_on_cancel* False), which runs on and is reaped anyway."""
        loop = self._loop
        pid = child.pid
        reader = w.Reader()
        got: asyncio.Future[bytes | None] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(rfd, w.RECV)
            except BlockingIOError:
                return
            frames = reader.feed(data) if data else []
            if not data or frames:
                loop.remove_reader(rfd)
                if not got.done():
                    got.set_result(frames[0] if frames else None)

        loop.add_reader(rfd, readable)
        try:
            raw = await (got if timeout is None else asyncio.wait_for(got, timeout))
        except (asyncio.CancelledError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) or kill_on_cancel:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                reaped()  # killed: reap it now (immediate), no zombie, no fd left
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"forked {self.info.name!r} did not finish in {timeout} s") from None
            raise
        finally:
            if not loop.is_closed():
                loop.remove_reader(rfd)
            os.close(rfd)
        status = await child.wait()
        if raw is None:
            raise CapsuleDied(pid, status, f"forked {self.info.name!r}")
        _, ok, payload = pickle.loads(raw)
        if ok == w.OK:
            return payload
        raise remote_error(payload, self.info.name)


def _child_body(handler: Callable[..., Any], args: tuple[Any, ...], info: Any, wfd: int,
                nocldwait: bool) -> None:  # pragma: no cover - runs in the child
    """A FORK child: the parent's state as it was, no running loop; run, answer, exit."""
    import asyncio.events as ev

    ev._set_running_loop(None)
    w.SERVED_EVENTS.append(info)
    try:
        result = handler(*args)
        if hasattr(result, "__await__") and hasattr(result, "send"):
            import aem_loop

            loop = aem_loop.new_event_loop()
            try:
                result = loop.run_until_complete(result)
            finally:
                loop.close()
        out = w.dumps((0, w.OK, None if nocldwait else result))
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        try:
            out = w.dumps((0, w.ERR, (exc, tb, repr(exc))))
        except Exception:
            out = w.dumps((0, w.ERR, (None, tb, repr(exc))))
    data = w.frame(out)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(wfd, view):]
    except BrokenPipeError:
        pass  # the parent is gone (its loop closed): nobody to tell
    os._exit(0)


_REAPERS: set[threading.Thread] = set()


def _reap_later(pid: int) -> None:
    """Wait for *pid* in a daemon thread of its own (its loop is closing)."""
    def reap() -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        finally:
            _REAPERS.discard(threading.current_thread())

    t = threading.Thread(target=reap, name=f"aem-reap-{pid}", daemon=True)
    _REAPERS.add(t)
    t.start()


def join_reapers(timeout: float | None = None) -> bool:
    """Wait until the children that outlived their loops are reaped (tests,
    and programs that want none left behind).  True if none is left."""
    for t in list(_REAPERS):
        t.join(timeout)
    return not _REAPERS


class CapsuleLoopMixin:
    """What the loops of both backends get from this module.

    - ``loop.cloner(handler, flags=..., pool=..., priority=..., name=...)``;
    - ``loop.set_default_executor(pool)`` accepts a :class:`CapsulePool`
      (stock asyncio 3.11 insists on a ThreadPoolExecutor).
    """

    def cloner(
        self,
        handler: Callable[..., Any],
        *,
        flags: EventFlags = EventFlags.CAPSULE,
        pool: CapsulePool | None = None,
        priority: int | None = None,
        name: str | None = None,
    ) -> ClonerEvent:
        return ClonerEvent(self, handler, flags=flags, pool=pool,  # type: ignore[arg-type]
                           priority=priority, name=name)

    _aem_capsule_pool: CapsulePool | None = None

    @property
    def _aem_forked(self) -> dict[int, int]:
        """Forked children (FORK cloner events) not reaped yet: pid -> pidfd."""
        d: dict[int, int] | None = self.__dict__.get("_aem_forked_d")
        if d is None:
            d = self.__dict__["_aem_forked_d"] = {}
        return d

    def close(self) -> None:
        forked = self.__dict__.get("_aem_forked_d")
        if forked and not self.is_running():  # type: ignore[attr-defined]
            # children that outlive the loop (fire and forget): their pidfds
            # close with it, and a thread reaps each when it exits (no zombie)
            for pid, pidfd in list(forked.items()):
                self.remove_reader(pidfd)  # type: ignore[attr-defined]
                os.close(pidfd)
                _reap_later(pid)
            forked.clear()
        super().close()  # type: ignore[misc]

    def set_default_executor(self, executor: Any) -> None:
        if isinstance(executor, CapsulePool):
            self._aem_capsule_pool = executor
            try:
                super().set_default_executor(executor)  # type: ignore[misc]
            except TypeError:  # asyncio >= 3.11 wants a ThreadPoolExecutor
                self._default_executor = executor
            return
        self._aem_capsule_pool = None
        super().set_default_executor(executor)  # type: ignore[misc]
