"""Event sources and their jobs.

A source says what an event waits for; its *job* is the small piece that
sits on the I/O backend (or the timer wheel, or the signal machinery) and
activates the events registered on it.  There is one job per watched thing
per loop (one waiter record per fd, STYLE practice 5), serving every event
registered on it: the same socket registered twice at two priorities is
read once and both events get all the messages.

Jobs run at job level (above every handler level, see
``core.priority.JOB_LEVEL``) and do bounded work per run: one ``recv`` of
at most ``READ_SIZE`` bytes, a signal, a child's exit.  A job whose
events' handlers fall behind stops watching its fd (``high_water``) until
an activation has run, so memory stays bounded whatever the sender does.
"""

from __future__ import annotations

import contextvars
import functools
import os
import signal as _signal
import socket
import threading
from asyncio import events as _aio_events
from collections import deque
from typing import Any, NamedTuple

from ..core.periodic import PeriodicJob, check_interval, check_missed
from ..core.priority import JOB_LEVEL, PRIORITY_VAR
from .classify import verdict
from .framers import FramingError, check_framer

__all__ = [
    "READ_SIZE",
    "ChildExit",
    "ChildStatus",
    "Periodic",
    "Readable",
    "Signal",
    "SocketData",
    "UserEvent",
    "Writable",
]

# One job run reads at most this much: large enough that a fast sender is
# served in few runs (a 64 KiB recv costs ~10 us), small enough that one
# flooded source cannot hold the loop for long between two urgent events.
READ_SIZE = 64 * 1024
# Default for SocketData: stop reading once this much read data waits for a
# handler (the kernel's socket buffer then pushes back on the sender).
DEFAULT_HIGH_WATER = 1024 * 1024


def job_context() -> contextvars.Context:
    """A context whose callbacks the core dispatches at job level."""
    ctx = contextvars.copy_context()
    ctx.run(PRIORITY_VAR.set, JOB_LEVEL)
    return ctx


def _fd_of(obj: object, what: str) -> int:
    if isinstance(obj, bool):
        raise TypeError(f"{what} must be a file descriptor or an object with fileno(), not bool")
    if isinstance(obj, int):
        fd = obj
    else:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"{what} must be a file descriptor or an object with fileno(), not {obj!r}"
            )
        fd = int(fileno())
    if fd < 0:
        raise ValueError(f"{what}: invalid file descriptor {fd}")
    return fd


class _Job:
    """Base of the jobs: the events it serves, attach/detach, start/stop."""

    kind = "job"

    def __init__(self, loop: Any, key: Any) -> None:
        self.loop = loop
        self.key = key
        self.events: list[Any] = []

    @classmethod
    def get(cls, loop: Any, key: Any, *args: Any) -> Any:
        jobs = loop._aem_jobs
        job = jobs.get(key)
        if job is None:
            return cls(loop, key, *args)
        if type(job) is not cls:
            raise ValueError(
                f"{key[0]} {key[1]!r} is already watched by a {job.kind} event on this loop; "
                f"one watched object has one kind of job (register the same source again "
                f"to have two handlers)"
            )
        return job

    def attach(self, ev: Any) -> _Job:
        first = not self.events
        # the most urgent registration is served first, FIFO within a level
        at = next((i for i, e in enumerate(self.events) if e.priority < ev.priority),
                  len(self.events))
        self.events.insert(at, ev)
        if first:
            try:
                self.start()
            except BaseException:
                self.events.remove(ev)
                raise
            self.loop._aem_jobs[self.key] = self
        return self

    def detach(self, ev: Any) -> None:
        if ev in self.events:
            self.events.remove(ev)
            ev._job = None
        if not self.events:
            self.loop._aem_jobs.pop(self.key, None)
            self.stop()
        elif ev._held:
            self.activated(ev)  # a pause ends with its event

    def activated(self, ev: Any) -> None:
        """The event's activation is running (a paused job may resume)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


# -- fd readiness --------------------------------------------------------------------


class _FdJob(_Job):
    """A job that watches an fd (readable, or writable with *write*) at job
    level, and can stop watching it for a while."""

    write = False

    def __init__(self, loop: Any, key: Any) -> None:
        super().__init__(loop, key)
        self.fd = key[1]
        self.watching = False

    def _ready(self) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        add = self.loop.add_writer if self.write else self.loop.add_reader
        job_context().run(add, self.fd, self._ready)
        self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            (self.loop.remove_writer if self.write else self.loop.remove_reader)(self.fd)

    def start(self) -> None:
        self._watch()

    def stop(self) -> None:
        self._unwatch()

    def hold(self, ev: Any) -> None:
        """``ev.pause()``: stop watching until every holder resumed."""
        self._unwatch()

    def _held(self) -> bool:
        return any(e._held for e in self.events)


class _ReadyJob(_FdJob):
    """Readiness of an fd.  Level-triggered readiness cannot be lost while
    nobody watches, so the job stops watching while every event it serves has
    an activation pending: repeated readiness is one activation."""

    def __init__(self, loop: Any, key: Any, write: bool) -> None:
        super().__init__(loop, key)
        self.write = write
        self.kind = "Writable" if write else "Readable"

    def _ready(self) -> None:
        for ev in list(self.events):
            ev._occur((self.fd,))
        if all(ev._pending is not None for ev in self.events):
            self._unwatch()

    def activated(self, ev: Any) -> None:
        if not self.watching and self.events and not self._held():
            self._watch()


class Readable:
    """The fd is readable.  The handler gets ``act.data == [fd]`` (one entry
    per merged readiness) and reads it itself."""

    def __init__(self, fd: Any) -> None:
        self.fd = _fd_of(fd, "Readable(fd)")

    def _aem_attach(self, ev: Any) -> Any:
        return _ReadyJob.get(ev._loop, ("fd", self.fd), False).attach(ev)

    def __repr__(self) -> str:
        return f"Readable({self.fd})"


class Writable:
    """The fd is writable (same contract as :class:`Readable`)."""

    def __init__(self, fd: Any) -> None:
        self.fd = _fd_of(fd, "Writable(fd)")

    def _aem_attach(self, ev: Any) -> Any:
        return _ReadyJob.get(ev._loop, ("wfd", self.fd), True).attach(ev)

    def __repr__(self) -> str:
        return f"Writable({self.fd})"


# -- socket data: a reactive job ----------------------------------------------------


class _SocketJob(_FdJob):
    kind = "SocketData"

    def __init__(self, loop: Any, key: Any, sock: socket.socket) -> None:
        super().__init__(loop, key)
        self.sock = sock
        self.finished = False

    def _ready(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset, aborted, ...
            self._finish(exc)
            return
        if not data:
            self._finish(None)
            return
        framed: dict[int, tuple[list[Any], BaseException | None]] = {}
        pause = False
        for ev in list(self.events):
            framer = ev.source.framer
            got = framed.get(id(framer))
            if got is None:
                try:
                    got = (framer.feed(data), None)
                except FramingError as exc:
                    got = (list(exc.messages), exc)
                framed[id(framer)] = got
            msgs, err = got
            if err is not None:
                # the stream cannot be framed any further: last activation
                ev._occur(msgs, nbytes=len(data), error=err, eof=True)
                self.detach(ev)
            elif msgs:
                classify = ev.source.classify
                level = None if classify is None else _classify(ev, classify, msgs)
                pending = ev._occur(msgs, nbytes=len(data), level=level)
                if pending > ev.source.high_water:
                    pause = True
                    ev.paused += 1
        if pause and self.events:
            self._unwatch()

    def _finish(self, exc: BaseException | None) -> None:
        """End of stream (exc None) or a socket error: each event gets what
        its framer still holds, and its last activation."""
        self.finished = True
        for ev in list(self.events):
            msgs: list[Any] = []
            err = exc
            if exc is None:
                try:
                    msgs = list(ev.source.framer.eof())
                except FramingError as fexc:
                    err = fexc
            ev._occur(msgs, error=err, eof=True)
            self.detach(ev)

    def activated(self, ev: Any) -> None:
        if self.watching or self.finished or not self.events or self._held():
            return
        if all(e._pending_bytes() <= e.source.high_water for e in self.events):
            self._watch()


def _classify(ev: Any, classify: Any, msgs: list[Any]) -> int:
    """The highest level *classify* gives these messages (see
    :func:`~aem_loop.events.classify.verdict`; a failure is the event's)."""
    report = functools.partial(ev._failed, what="classifier")
    return max(verdict(classify, msg, ev.priority, report) for msg in msgs)


class SocketData:
    """Complete messages from a connected, non-blocking socket.

    The job reads what is there (one ``recv`` per run), frames it with
    *framer* (:mod:`aem_loop.framers`; default ``Raw()``) and activates the
    handler with the complete messages as ``act.data``.  At end of stream
    the last activation has ``act.eof`` set (and ``act.error`` an
    :class:`~aem_loop.framers.IncompleteMessage` if a message was cut
    short); a framing error or a socket error ends the stream the same way,
    with the error.  Reading stops while more than *high_water* bytes wait
    for the handler.  The socket stays the caller's: the event never closes it.

    *classify* (``message -> priority | None``) decides the priority from
    the data: it sees each complete message at job level, and the
    activation carrying it runs at the highest level it answered (never
    below the event's priority; ``act.priority`` says which).
    """

    def __init__(self, sock: socket.socket, framer: Any = None, *,
                 high_water: int = DEFAULT_HIGH_WATER, classify: Any = None) -> None:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"SocketData needs a socket.socket, not {sock!r}")
        if sock.fileno() < 0:
            raise ValueError("SocketData: the socket is closed")
        if sock.gettimeout() != 0:
            raise ValueError("SocketData: the socket must be non-blocking "
                             "(sock.setblocking(False))")
        if framer is None:
            from .framers import Raw

            framer = Raw()
        self.framer = check_framer(framer)
        if isinstance(high_water, bool) or not isinstance(high_water, int) or high_water < 1:
            raise ValueError(f"high_water must be an int >= 1 byte, got {high_water!r}")
        self.high_water = high_water
        if classify is not None and not callable(classify):
            raise TypeError(f"classify must be callable or None, got {classify!r}")
        self.classify = classify
        self.sock = sock

    def _aem_attach(self, ev: Any) -> Any:
        fd = self.sock.fileno()
        return _SocketJob.get(ev._loop, ("fd", fd), self.sock).attach(ev)

    def __repr__(self) -> str:
        return f"SocketData(fd={self.sock.fileno()}, {self.framer!r})"


# -- signals -------------------------------------------------------------------------


class _SignalJob(_Job):
    kind = "Signal"

    def start(self) -> None:
        job_context().run(self.loop.add_signal_handler, self.key[1], self._ready)

    def stop(self) -> None:
        self.loop.remove_signal_handler(self.key[1])

    def _ready(self) -> None:
        for ev in list(self.events):
            ev._occur((self.key[1],))


class Signal:
    """A Unix signal (``loop.add_signal_handler`` underneath: main thread only).
    ``act.data`` holds the signal number once per merged delivery."""

    def __init__(self, signum: int) -> None:
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(f"signum must be an int signal number, not {signum!r}")
        if signum in (_signal.SIGKILL, _signal.SIGSTOP) or not 0 < signum < _signal.NSIG:
            raise ValueError(f"signal {signum} cannot be caught")
        self.signum = int(signum)

    def _aem_attach(self, ev: Any) -> Any:
        return _SignalJob.get(ev._loop, ("signal", self.signum)).attach(ev)

    def __repr__(self) -> str:
        try:
            return f"Signal({_signal.Signals(self.signum).name})"
        except ValueError:
            return f"Signal({self.signum})"


# -- child exit ------------------------------------------------------------------------


class ChildStatus(NamedTuple):
    pid: int
    returncode: int | None  # as subprocess: -N for a signal; None if not ours to reap


class _ChildJob(_Job):
    kind = "ChildExit"

    def __init__(self, loop: Any, key: Any, reap: bool) -> None:
        super().__init__(loop, key)
        self.pid = key[1]
        self.reap = reap
        self.pidfd = -1

    def start(self) -> None:
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            raise ProcessLookupError(f"ChildExit: no process with pid {self.pid}") from None
        try:
            job_context().run(self.loop.add_reader, self.pidfd, self._ready)
        except BaseException:
            os.close(self.pidfd)
            raise

    def stop(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1

    def _ready(self) -> None:
        code: int | None = None
        if self.reap:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not our child, or reaped elsewhere
                pid, status = self.pid, None
            if pid == 0:
                return  # not exited yet (spurious readiness)
            if status is not None:
                code = os.waitstatus_to_exitcode(status)
        for ev in list(self.events):
            ev._occur((ChildStatus(self.pid, code),), eof=True)
            self.detach(ev)


class ChildExit:
    """A process exited (through a pidfd: no SIGCHLD, no thread).

    With *reap* (default) the job reaps it and ``act.data[0].returncode`` is
    its exit code (``-N`` for signal N).  Do not use it for a process that
    something else waits for (``asyncio.create_subprocess_*`` has
    ``proc.wait()``); pass ``reap=False`` to be told without reaping
    (returncode None).
    """

    def __init__(self, pid: int, *, reap: bool = True) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {pid!r}")
        if pid <= 0:
            raise ValueError(f"pid must be > 0, got {pid!r}")
        self.pid = pid
        self.reap = bool(reap)

    def _aem_attach(self, ev: Any) -> Any:
        return _ChildJob.get(ev._loop, ("pid", self.pid), self.reap).attach(ev)

    def __repr__(self) -> str:
        return f"ChildExit({self.pid})"


# -- user events ---------------------------------------------------------------------


class _UserJob:
    """Per event: an inbox filled from any thread, drained on the loop."""

    kind = "UserEvent"

    def __init__(self, source: UserEvent, ev: Any) -> None:
        self.source = source
        self.ev = ev
        self.inbox: deque[Any] = deque()
        self.lock = threading.Lock()
        self.scheduled = False
        self.ctx = ev._ctx.copy()

    def put(self, data: Any) -> None:
        self.inbox.append(data)
        if _aio_events._get_running_loop() is self.ev._loop:
            # on the loop: occur now, after what threads put before (the
            # handler runs later, never inside trigger())
            self._drain(inline=False)
            return
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        loop = self.ev._loop
        try:
            # a context of its own: the activation may run inline in the event's
            loop.call_soon_threadsafe(self._drain, context=self.ctx)
        except BaseException:
            with self.lock:
                self.scheduled = False
            raise

    def _drain(self, inline: bool = True) -> None:
        with self.lock:
            self.scheduled = False
        items = []
        inbox = self.inbox
        while inbox:
            items.append(inbox.popleft())
        if items:
            self.ev._occur(items, count=len(items), inline=inline)

    def detach(self, ev: Any) -> None:
        self.source._detach(self)
        ev._job = None

    def activated(self, ev: Any) -> None:
        pass


class UserEvent:
    """An event the program raises itself: ``ev.trigger(data)`` (or
    ``source.trigger(data)`` for every registration), from any thread.
    Every triggered value reaches ``act.data``, in order, none lost."""

    def __init__(self) -> None:
        self._jobs: list[_UserJob] = []
        self._lock = threading.Lock()

    def _aem_attach(self, ev: Any) -> Any:
        job = _UserJob(self, ev)
        with self._lock:
            self._jobs = [*self._jobs, job]
        return job

    def _detach(self, job: _UserJob) -> None:
        with self._lock:
            self._jobs = [j for j in self._jobs if j is not job]

    def trigger(self, data: Any = None) -> None:
        """Occur with *data* for every event registered on this source."""
        jobs = self._jobs
        if not jobs:
            raise RuntimeError("UserEvent.trigger(): no event is registered on this source")
        for job in jobs:
            job.put(data)

    def __repr__(self) -> str:
        return "UserEvent()"


# -- periodic ---------------------------------------------------------------------------


class _PeriodicJob(_Job):
    kind = "Periodic"

    def __init__(self, loop: Any, key: Any, source: Periodic, level: int) -> None:
        super().__init__(loop, key)
        self.source = source
        self.level = level
        self.job: PeriodicJob | None = None

    def start(self) -> None:
        self.job = PeriodicJob(self.loop, self.source.interval, self._tick, (),
                               priority=self.level, missed=self.source.missed)

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def _tick(self, ticks: int = 1) -> None:
        now = self.loop.time()
        for ev in list(self.events):
            ev._occur((now,), count=ticks)


class Periodic:
    """Every *interval* seconds (drift-free, see ``loop.call_every``); a
    handler that falls behind gets the missed ticks merged: ``act.data``
    holds the loop time of each tick it stands for."""

    def __init__(self, interval: float, *, missed: str = "coalesce") -> None:
        self.interval = check_interval(interval)
        self.missed = check_missed(missed)

    def _aem_attach(self, ev: Any) -> Any:
        return _PeriodicJob.get(ev._loop, ("periodic", id(self)), self, ev.priority).attach(ev)

    def __repr__(self) -> str:
        return f"Periodic({self.interval}, missed={self.missed!r})"
