"""Framing and process bodies shared by the pool, its zygote and its capsules.

Wire format on a capsule's socketpair (SOCK_STREAM): a 4-byte big-endian
length, then a pickle.  Requests are ``(fn_pickle, args, kwargs or None,
event)`` (the function pickled apart, so that both sides cache it);
replies ``(0, status, payload)`` with status OK, ERR (payload: the
exception or None, its traceback text, its repr) or HELLO (payload: pid),
sent once when the capsule starts.

The zygote talks to the pool over a SOCK_SEQPACKET socketpair (message
boundaries, SCM_RIGHTS): ``b"S"`` + 8-byte capsule id + its busy-poll
window (a double) with one fd attached asks for a capsule on that fd; the
zygote answers ``b"X"`` + pid + wait status for every child that exits.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import socket
import struct
import time
import traceback
from typing import Any, NamedTuple

HDR = struct.Struct("!I")
EXIT = struct.Struct("!cii")  # b"X", pid, raw wait status
SPAWN = struct.Struct("!cQd")  # b"S", capsule id, its busy-poll window (spin)

OK, ERR, HELLO = 0, 1, 2

# Bytes asked of one recv().  Python allocates that much for every call:
# above glibc's mmap threshold (128 KiB) each read would map and unmap
# memory (syscalls and page faults: ~2x the whole round trip of a small call
# on this VM), so stay below it; big frames take a few reads.
RECV = 65536

# What pool.call() and a capsule read into: a buffer of this size kept per
# capsule (recv_into: no allocation per read, a reply up to this size in one
# read, and the pickle loaded from the buffer without a copy).  Bigger frames
# get a buffer of their own size.
RBUF = 256 * 1024
# Frames from this size are sent as header + body with one sendmsg (no copy
# to join them); smaller ones are joined (one syscall, a cheap copy).
BIG = 16384

# Busy-poll window (seconds), the pool's default *spin*: after sending a
# reply a capsule polls its socket this long before it sleeps in recv(), and
# CapsulePool.call() polls for its reply this long before it blocks.  Waking
# a sleeping process costs more than the whole call on a VM (a socketpair
# round trip between two sleeping processes measured 31 us here, 12 us when
# both poll); a capsule that gets no new call within the window sleeps.
SPIN = 100e-6
CAPSULE_SPIN = SPIN  # in a capsule: the window it was started with

class EventInfo(NamedTuple):
    """What a child knows of a cloner event that activated it."""

    id: int
    name: str
    flags: int


# Capsule-side record of the cloner events this process has served
# (aem_loop.capsules.current_events()).
SERVED_EVENTS: list[Any] = []


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def frame(payload: bytes) -> bytes:
    return HDR.pack(len(payload)) + payload


class Reader:
    """Incremental decoder of length-prefixed frames."""

    __slots__ = ("buf", "frames")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames: list[Any] = []  # complete frames read ahead (recv_frame_blocking)

    def feed(self, data: bytes) -> list[Any]:
        """Complete frames so far (bytes or memoryviews, for pickle.loads)."""
        buf = self.buf
        if not buf and len(data) >= 4:
            # the usual case: exactly one whole frame in one read, no copy
            (n,) = HDR.unpack_from(data)
            if len(data) == 4 + n:
                return [memoryview(data)[4:]]
        buf += data
        out = []
        while len(buf) >= 4:
            (n,) = HDR.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            out.append(bytes(buf[4 : 4 + n]))
            del buf[: 4 + n]
        return out


def recv_into_spinning(sock: socket.socket, buf: bytearray, spin: float) -> int:
    """``sock.recv_into(buf)``, polling without blocking for up to *spin*
    seconds first; the number of bytes read (0 at EOF)."""
    recv_into = sock.recv_into
    if spin <= 0:
        return recv_into(buf)
    clock = time.perf_counter
    end = clock() + spin
    # Between polls whoever else wants this CPU runs first: on 2 cores a
    # bare spin cost ~30% of a busy pool's throughput here.
    pause = os.sched_yield
    while True:
        try:
            return recv_into(buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if clock() >= end:
                return recv_into(buf)
            pause()


def frame_from(sock: socket.socket, buf: bytearray, n: int, reader: Reader) -> Any:
    """The first frame of the *n* bytes a recv_into put at the start of *buf*.

    For request/reply traffic (the peer sends one frame and waits): a
    memoryview of *buf* when the frame is whole (valid until the next read
    into *buf*), else the rest is read straight into a buffer of the frame's
    size.  More than one frame (a HELLO and a reply), or bytes left over in
    *reader*, go through *reader* (further frames wait in ``reader.frames``).
    None at EOF.
    """
    if not n:
        return None
    if not reader.buf and n >= 4:
        (size,) = HDR.unpack_from(buf)
        if size + 4 == n:
            return memoryview(buf)[4:n]
        if size + 4 > n:
            big = bytearray(size)
            view = memoryview(big)
            got = n - 4
            view[:got] = memoryview(buf)[4:n]
            while got < size:
                try:
                    r = sock.recv_into(view[got:])
                except OSError:
                    return None
                if not r:
                    return None
                got += r
            return big
    frames = reader.feed(bytes(buf[:n]))
    if not frames:
        return recv_frame_blocking(sock, reader, None)
    reader.frames.extend(frames[1:])
    return frames[0]


def frames_from(sock: socket.socket, buf: bytearray, n: int, reader: Reader) -> list[Any] | None:
    """:func:`frame_from` and the frames read ahead with it, in order; None at EOF."""
    first = frame_from(sock, buf, n, reader)
    if first is None:
        return None
    ahead = reader.frames
    if not ahead:
        return [first]
    frames = [first, *ahead]
    ahead.clear()
    return frames


def send_frame(sock: socket.socket, body: bytes) -> None:
    """Send *body* as one frame; a big one without joining it to its header."""
    if len(body) < BIG:
        sock.sendall(HDR.pack(len(body)) + body)
        return
    hdr = HDR.pack(len(body))
    sent = sock.sendmsg([hdr, body])
    if sent < 4:  # a partial send (a signal): the rest of the header first
        sock.sendall(hdr[sent:])
        sent = 4
    if sent - 4 < len(body):
        sock.sendall(memoryview(body)[sent - 4:])


def recv_frame_blocking(sock: socket.socket, reader: Reader, timeout: float | None) -> Any:
    """One frame from the blocking socket *sock*, waiting up to *timeout* seconds.

    Returns None at EOF; raises TimeoutError.
    """
    if reader.frames:
        return reader.frames.pop(0)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise TimeoutError
        try:
            data = sock.recv(RECV)
        except (ConnectionResetError, OSError):
            return None
        if not data:
            return None
        frames = reader.feed(data)
        if frames:
            reader.frames.extend(frames[1:])  # e.g. a reply read with a HELLO
            return frames[0]


def describe_status(status: int) -> str:
    """Human words for a raw wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


# -- the zygote ------------------------------------------------------------------


def _fd_targets() -> dict[int, str]:
    """This process's open fds and what each refers to ("pipe:[123]", ...)."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except (OSError, ValueError):
            pass
    return out


# Fds the at-fork handlers opened in this process when it was forked (see
# fork_clean); kept by _close_fds_except.
_ATFORK_FDS: set[int] = set()


def fork_clean() -> int:
    """``os.fork()``; the child also learns which fds at-fork handlers opened in it.

    Libraries re-create some state in every child: libuv (uvloop) closes its
    signal lock pipe by fd number and makes a new one.  A template process
    that closed that new pipe as "inherited" would later reuse its numbers
    for its own sockets, and libuv would close those in the template's next
    child (a capsule then died before its HELLO).  Such fds are kept.
    """
    global _ATFORK_FDS
    before = _fd_targets()
    pid = os.fork()
    if pid == 0:
        _ATFORK_FDS = {fd for fd, what in _fd_targets().items() if before.get(fd) != what}
    return pid


def _close_fds_except(keep: set[int]) -> None:
    """Close every inherited fd above 2 but *keep* and those of at-fork handlers."""
    keep = keep | _ATFORK_FDS
    try:
        fds = [int(f) for f in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _forget_parent_state() -> None:
    """In a fork of the parent: no running loop, no policy, default signals."""
    import asyncio.events as ev

    ev._set_running_loop(None)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ev.set_event_loop_policy(None)
    except Exception:
        pass
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGHUP):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    # Ctrl-C goes to the whole process group: the parent decides, not capsules.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass


REFILL_DELAY = 0.05  # seconds between handing out a spare and forking the next
# At shutdown, seconds a capsule has to exit after SIGTERM before SIGKILL.
KILL_GRACE = 2.0
SPARES = 1  # capsules the zygote keeps forked ahead, waiting for a socket


def _warm_up() -> None:
    """Run a capsule's code path once while waiting, so that the pages it
    writes (reference counts, allocator arenas) are copied now, not on the
    first call (each copy-on-write fault is microseconds in a VM)."""
    x, y = socket.socketpair()
    try:
        x.sendall(frame(dumps((dumps(len), (b"warm",), None, None))))
        data = y.recv(4096)
        fnb, args, _, _ = pickle.loads(memoryview(data)[4:])
        y.sendall(frame(dumps((0, OK, pickle.loads(fnb)(*args)))))
        pickle.loads(memoryview(x.recv(4096))[4:])
        Reader().feed(b"")
    finally:
        x.close()
        y.close()


def zygote_main(
    zsock: socket.socket,
    preload: tuple[str, ...],
    initializer: Any = None,
    initargs: tuple[Any, ...] = (),
) -> None:
    """Body of the template process: hand out capsules on request, report exits.

    It keeps SPARES capsules forked ahead of demand (each blocked on a
    control socket until it is given its socketpair end), so that a request
    costs one message instead of a fork; it forks the next spare when no
    request is waiting.
    """
    _close_fds_except({zsock.fileno()})
    _forget_parent_state()
    for mod in preload:
        __import__(mod)
    import gc

    gc.freeze()  # the inherited heap stays shared with the parent (no GC writes)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wfd)
    children: set[int] = set()
    spares: dict[int, socket.socket] = {}  # pid -> its control socket
    zfd = zsock.fileno()

    def fork_spare() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = fork_clean()
        if pid == 0:  # pragma: no cover - a spare capsule
            try:
                _close_fds_except({b.fileno()})
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _warm_up()
                try:
                    msg, fds, _, _ = socket.recv_fds(b, 64, 1)
                except OSError:
                    fds = []
                b.close()
                if fds:
                    capsule_main(fds[0], initializer, initargs, SPAWN.unpack(msg)[2])
            finally:
                os._exit(0)
        b.close()
        children.add(pid)
        spares[pid] = a

    def drop_spares() -> None:
        for a in spares.values():
            a.close()  # EOF: it exits
        spares.clear()

    # When the next spare may be forked: at once at start, REFILL_DELAY after
    # one was handed out (a fork here costs milliseconds of CPU, which the
    # capsule just handed out and its caller need more on a 2-core machine).
    spare_at = 0.0
    while True:
        want_spare = len(spares) < SPARES
        wait = max(0.0, spare_at - time.monotonic()) if want_spare else None
        try:
            ready, _, _ = select.select([zfd, rfd], [], [], wait)
        except InterruptedError:
            ready = [rfd]
        if not ready and want_spare:
            if time.monotonic() >= spare_at:
                fork_spare()  # nothing asked: use the idle moment
            continue
        if rfd in ready:
            try:
                os.read(rfd, 512)
            except BlockingIOError:
                pass
        # reap every exited child (also after a missed wakeup)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            spare = spares.pop(pid, None)
            if spare is not None:
                spare.close()
                continue  # no pool ever knew it
            try:
                zsock.send(EXIT.pack(b"X", pid, status))
            except OSError:
                pass
        if zfd in ready:
            try:
                msg, fds, _, _ = socket.recv_fds(zsock, 65536, 1)
            except OSError:
                msg, fds = b"", []
            if not msg:  # the parent is gone or shut us down
                break
            if msg[:1] == b"I":  # a prestarted zygote learns its pool's initializer
                initializer, initargs = pickle.loads(msg[1:])
                drop_spares()  # they were forked without it
            elif msg[:1] == b"S" and len(msg) == SPAWN.size and fds:
                os.set_inheritable(fds[0], False)  # see capsule_main
                handed = False
                while spares and not handed:
                    pid, a = spares.popitem()
                    try:
                        socket.send_fds(a, [msg], fds)
                        handed = True
                        spare_at = time.monotonic() + REFILL_DELAY
                    except OSError:
                        pass  # that spare died: try the next, or fork
                    a.close()
                if not handed:
                    pid = fork_clean()
                    if pid == 0:  # pragma: no cover - a capsule
                        try:
                            _close_fds_except({fds[0]})
                            signal.set_wakeup_fd(-1)
                            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                            capsule_main(fds[0], initializer, initargs, SPAWN.unpack(msg)[2])
                        finally:
                            os._exit(0)
                    children.add(pid)
                os.close(fds[0])
            else:
                for fd in fds:
                    os.close(fd)
    # Shutdown: the capsules notice EOF on their own sockets; those still
    # busy are told to stop, then every child is reaped before we go.
    drop_spares()
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped one acts on it too
        except ProcessLookupError:
            pass
    # Reap them; what is left after KILL_GRACE (SIGTERM ignored or handled
    # forever) is killed.
    deadline = time.monotonic() + KILL_GRACE
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.discard(pid)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = math.inf
            continue
        try:
            select.select([rfd], [], [], None if left == math.inf else left)
            os.read(rfd, 512)
        except (InterruptedError, BlockingIOError):
            pass


# -- a capsule ----------------------------------------------------------------------


_capsule_loop: Any = None


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine handler on this capsule's own loop (kept between calls)."""
    global _capsule_loop
    if _capsule_loop is None:
        import aem_loop

        _capsule_loop = aem_loop.new_event_loop()
    return _capsule_loop.run_until_complete(coro)


def capsule_main(fd: int, initializer: Any = None, initargs: tuple[Any, ...] = (),
                 spin: float = SPIN) -> None:
    global CAPSULE_SPIN
    CAPSULE_SPIN = spin
    # Received over SCM_RIGHTS without MSG_CMSG_CLOEXEC: inheritable.  A
    # program the capsule's code starts must not get the socket (it could
    # write a frame the pool would take as a reply).
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock, initializer, initargs, spin)
    finally:
        sock.close()


def _serve(sock: socket.socket, initializer: Any, initargs: tuple[Any, ...],
           spin: float) -> None:
    """A capsule's life: HELLO (or the initializer's error), then one reply
    per request until the pool closes the socket."""
    sock.setblocking(True)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            sock.sendall(frame(dumps((0, ERR, (None, tb, repr(exc))))))
            return
    sock.sendall(frame(dumps((0, HELLO, os.getpid()))))
    reader = Reader()
    rbuf = bytearray(RBUF)
    fns: dict[bytes, Any] = {}  # function pickles seen -> functions
    loads = pickle.loads
    while True:
        try:
            frames = frames_from(sock, rbuf, recv_into_spinning(sock, rbuf, spin), reader)
        except OSError:
            return
        if frames is None:
            return  # the pool closed our socket or died: leave
        for raw in frames:
            call_id = 0
            fn: Any = None
            try:
                fnb, args, kwargs, event = loads(raw)
                fn = fns.get(fnb)
                if fn is None:
                    if len(fns) > 256:
                        fns.clear()
                    fn = fns[fnb] = loads(fnb)
                if event is not None and event not in SERVED_EVENTS:
                    SERVED_EVENTS.append(event)
                result = fn(*args, **kwargs) if kwargs else fn(*args)
                if hasattr(result, "__await__") and hasattr(result, "send"):
                    result = _run_coroutine(result)
                try:
                    out = dumps((call_id, OK, result))
                except Exception as exc:
                    raise TypeError(
                        f"the result of {getattr(fn, '__qualname__', fn)!r} cannot be "
                        f"pickled: {exc}"
                    ) from exc
            except SystemExit:
                sock.close()
                raise
            except BaseException as exc:
                tb = "".join(traceback.format_exception(exc))
                try:
                    out = dumps((call_id, ERR, (exc, tb, repr(exc))))
                except Exception:
                    out = dumps((call_id, ERR, (None, tb, repr(exc))))
            send_frame(sock, out)

