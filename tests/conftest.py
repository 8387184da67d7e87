"""Every async test runs on both aem backends; conformance tests also on stock asyncio.

pytest-asyncio parametrizes each ``@pytest.mark.asyncio`` test over the
factories returned by ``pytest_asyncio_loop_factories``:

- ``selector`` and ``uvloop``: aem loops;
- ``asyncio``: the stock loop, added for tests marked ``conformance`` (the
  reference: what passes there must pass on aem).

``@pytest.mark.backends("selector")`` restricts a test to some backends.
Every test is checked for leaked file descriptors, child processes and
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

import aem_loop

pytest_plugins = ["pytester"]

AEM_BACKENDS = ("selector", "uvloop")

# A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and
# an ignored signal stays ignored across exec: the processes the tests start
# would then ignore the Ctrl-C (SIGINT) they are sent.  Python installs its
# KeyboardInterrupt handler only where SIGINT is not ignored at start-up.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: also run on stock asyncio, the reference"
    )
    config.addinivalue_line("markers", "backends(*names): run only on these backends")


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    names = list(AEM_BACKENDS)
    if item.get_closest_marker("conformance"):
        names.insert(0, "asyncio")
    only = item.get_closest_marker("backends")
    if only:
        names = [n for n in names if n in only.args]
    factories = {}
    for name in names:
        if name == "asyncio":
            factories[name] = asyncio.new_event_loop
        else:
            factories[name] = functools.partial(aem_loop.new_event_loop, backend=name)
    return factories


def pytest_sessionstart(session: pytest.Session) -> None:
    # libuv opens a process-wide pipe the first time a loop runs; open it
    # now so that the per-test fd check sees only what a test leaked.
    loop = aem_loop.new_event_loop(backend="uvloop")
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a
    test starts in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], **popen) -> Iterator[subprocess.Popen]:
    """*cmd* in a process of its own, text pipes for stdout and stderr;
    killed on the way out if it still runs (a test that failed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def ends_cleanly(proc: subprocess.Popen, sig: int | None = signal.SIGINT) -> str:
    """Send *sig* (SIGINT: as Ctrl-C does; None: the process stops by
    itself) and wait: it exits 0 without a traceback.  The rest of its
    standard output."""
    if sig is not None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _children() -> set[int]:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN
        return set()


@pytest.fixture(autouse=True)
def fresh_priority_use():
    """Each test starts as a fresh process would: no priority used yet, so a
    uvloop-backend loop starts on its fast path whatever ran before (the
    first non-default priority a test checks ends it, as in a program).  A
    test must not leave a priority set in the main thread's context."""
    prio = importlib.import_module("aem_loop.core.priority")  # the module, not the class
    assert aem_loop.current_priority() == aem_loop.Priority.NORMAL, "a test left a priority set"
    prio._Use.used = False
    prio._Use.watchers.clear()
    yield
    assert aem_loop.current_priority() == aem_loop.Priority.NORMAL, "the test left a priority set"


@pytest.fixture(autouse=True)
def no_leaks():
    """Assert the test left no fd, child process or thread behind."""
    fds, kids = _fds(), _children()
    threads = set(threading.enumerate())
    yield
    import gc

    # Threads first: one that is still ending (a pool's manager, a reaper)
    # closes its fds and reaps its children as it ends.
    for t in set(threading.enumerate()) - threads:
        t.join(timeout=5)
    gc.collect()
    leaked_fds = _fds() - fds
    # /proc listing itself opens an fd that is gone by the time we look.
    leaked_fds = {fd for fd in leaked_fds if os.path.exists(f"/proc/self/fd/{fd}")}
    names = [os.readlink(f"/proc/self/fd/{fd}") for fd in leaked_fds]
    assert not leaked_fds, f"leaked fds: {names}"
    assert _children() <= kids, f"leaked child processes: {_children() - kids}"
    left = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not left, f"leaked threads: {left}"


def new_loop(backend: str, fast_path: bool = True) -> asyncio.AbstractEventLoop:
    """A new loop: stock asyncio's ("asyncio") or aem_loop's on *backend*."""
    if backend == "asyncio":
        return asyncio.new_event_loop()
    return aem_loop.new_event_loop(backend=backend, fast_path=fast_path)


def backend_of(loop: asyncio.AbstractEventLoop) -> str:
    """"asyncio", "selector" or "uvloop" for a running test loop."""
    return getattr(loop, "backend", "asyncio")


async def enter_priority_mode(loop: asyncio.AbstractEventLoop) -> None:
    """Leave the fast path (on uvloop's, default-priority callbacks go to
    uvloop's own queue until a non-default priority shows up): a callback
    at a non-default priority, run to completion."""
    ran = loop.create_future()
    with aem_loop.priority(aem_loop.Priority.LOW):
        loop.call_soon(ran.set_result, None)
    await ran


async def data_received_once(loop: asyncio.AbstractEventLoop,
                             protocol_factory: Callable[[], asyncio.Protocol],
                             done: asyncio.Future) -> None:
    """Send one message to a connection of *protocol_factory*'s (so that its
    data_received runs from the loop's I/O, as a server's does) and wait
    for *done*."""
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(protocol_factory, sock=a)
    try:
        b.send(b"go")
        await done
    finally:
        transport.close()
        b.close()


async def urgent_connects_in_a_backlog(count: int, step: float, clients: int,
                                       first: Callable[[int, socket.socket], bool],
                                       under: Callable[[], contextlib.AbstractContextManager]
                                       | None = None) -> list:
    """A server made under HIGH (or *under()*) beside *count* default callbacks queued from
    I/O (one data_received), each busy for *step* seconds.  A client connects
    at the first callback for which *first(i, listener)* is true, then at the
    first callback after each accept, *clients* times in all.  The order of
    what ran: the callbacks' numbers, "connected-N" after the callback that
    connected, "accepted-N" at the server's connection_made."""
    import time

    loop = asyncio.get_running_loop()
    order: list = []
    done = loop.create_future()
    transports: list = []
    made: list[socket.socket] = []

    class Urgent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)
            order.append(f"accepted-{len(transports)}")

    with aem_loop.priority(aem_loop.Priority.HIGH) if under is None else under():
        server = await loop.create_server(Urgent, "127.0.0.1", 0)
    listener = server.sockets[0]

    def busy(i: int) -> None:
        end = time.monotonic() + step
        while time.monotonic() < end:
            pass
        order.append(i)
        if len(made) < clients and (f"accepted-{len(made)}" in order if made
                                    else first(i, listener)):
            made.append(socket.create_connection(listener.getsockname()))
            order.append(f"connected-{len(made)}")
        if i == count - 1:
            done.set_result(None)

    class Kick(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            for i in range(count):
                loop.call_soon(busy, i)

    try:
        await data_received_once(loop, Kick, done)
    finally:
        for c in made:
            c.close()
        for t in transports:
            t.close()
        server.close()
        await server.wait_closed()
    return order
