"""Quiet urgent fds signalled by the kernel (backends/sigio.py).

A loop in the main thread whose urgent fds (I/O registered above the default
level on the selector backend; servers and connections made under a
priority on the uvloop backend) stay quiet when asked has the kernel signal
them (O_ASYNC, SIGIO) instead of asking at every time slice or checkpoint:
a signal ends what runs at its next callback.  These tests look at what the
kernel sees (the fds' O_ASYNC flag, the process's SIGIO disposition) and at
the order of callbacks.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

import aem_loop
from conftest import urgent_connects_in_a_backlog

HIGH = aem_loop.Priority.HIGH


def o_async(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ASYNC)


def step(order: list, i: int) -> None:
    """One callback of a backlog: longer than half a time slice (0.2 ms)."""
    end = time.monotonic() + 0.00015
    while time.monotonic() < end:
        pass
    order.append(i)


async def backlog(order: list, until: Callable[[], bool], action: Callable[[int], None],
                  limit: int = 4000) -> None:
    """Four default-level tasks of short busy steps (so that shares spend
    slices) until *until* says so, or *limit* steps (~0.6 s) have run; each
    step calls *action* with its number.  The caller checks what it waited for."""
    stop = asyncio.Event()
    steps = 0

    async def worker(w: int) -> None:
        nonlocal steps
        i = w
        while not stop.is_set():
            step(order, i)
            action(i)
            steps += 1
            if until() or steps >= limit:
                stop.set()
            i += 4
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(w) for w in range(4)))


async def urgent_connection(on_data: Callable[[bytes], None]):
    """A server made under HIGH, a client socket connected to it, and the
    server's transport of that connection; *on_data* gets what it receives."""
    loop = asyncio.get_running_loop()
    accepted = loop.create_future()

    class Urgent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

        def data_received(self, data: bytes) -> None:
            on_data(data)

    with aem_loop.priority(HIGH):
        server = await loop.create_server(Urgent, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    return server, client, await accepted


async def read_when_asked(order: list, server: asyncio.AbstractServer, client: socket.socket,
                          fd: int) -> None:
    """The urgent connection (*fd*) and its listener are asked, not
    signalled; a message sent now is then read within a few steps of the
    backlog ("sent" marks where: the caller checks)."""
    assert not o_async(fd) and not o_async(server.sockets[0].fileno())
    client.send(b"x")
    order.append("sent")
    await backlog(order, lambda: b"x" in order, lambda i: None)


async def close_urgent(server: asyncio.AbstractServer, client: socket.socket,
                       transport: asyncio.BaseTransport) -> None:
    client.close()
    transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_a_quiet_urgent_listener_is_signalled_and_its_accept_runs_next():
    """A listener under HIGH beside a busy default backlog: once its slice
    boundaries found it quiet, its fd has O_ASYNC, SIGIO is the loop's, and
    a connection made by one backlog callback is accepted right after that
    callback, before any other (a slice boundary would come a step later)."""
    loop = asyncio.get_running_loop()
    order: list = []
    writers: list = []

    def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        order.append("accepted")
        writers.append(writer)

    with aem_loop.priority(HIGH):
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    listener = server.sockets[0]
    client = socket.socket()
    state = {"connected": False}

    def action(i: int) -> None:
        if not state["connected"] and o_async(listener.fileno()):
            assert signal.getsignal(signal.SIGIO) not in (signal.SIG_DFL, signal.SIG_IGN)
            client.connect(listener.getsockname())
            select.select([listener], [], [], 5)  # the kernel has queued it (and signalled)
            order.append("connected")
            state["connected"] = True

    try:
        await backlog(order, lambda: "accepted" in order, action)
    finally:
        client.close()
        for w in writers:
            w.close()
            await w.wait_closed()  # its connection_lost: no longer urgent
        server.close()
        await server.wait_closed()
    assert "connected" in order, "the listener never got O_ASYNC"
    at = order.index("connected")
    assert order[at + 1] == "accepted", order[at - 2:at + 4]
    assert loop.statistics().urgent_signals >= 1


@pytest.mark.asyncio
async def test_each_signalled_connection_is_accepted_next_behind_a_backlog_from_io():
    """A signalled listener under HIGH beside 1000 short default callbacks
    queued from I/O (several to a time slice): a client connects once the
    listener has O_ASYNC, and again at the first callback after that accept
    (on the uvloop backend the first accept holds uvloop's queue, whose
    callbacks are then released one by one: the second connection comes
    while they are held).  Each is accepted right after the callback that
    connected, and the backlog runs in order."""
    order = await urgent_connects_in_a_backlog(
        1000, 0.00006, 2, lambda i, listener: o_async(listener.fileno()))
    assert [x for x in order if isinstance(x, int)] == list(range(1000))
    marks = {x: order.index(x) for x in order if isinstance(x, str)}
    assert len(marks) == 4, ("the listener never got O_ASYNC", marks)
    assert marks["accepted-1"] == marks["connected-1"] + 1, marks
    assert marks["accepted-2"] == marks["connected-2"] + 1, marks


@pytest.mark.asyncio
async def test_signals_that_come_too_often_give_way_to_asking_and_lose_nothing():
    """An urgent connection that turns busy after its fd was signalled: the
    signals (one per message) cost more than asking at the slices, so the fd
    loses O_ASYNC; every message arrives, in order."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    ended = loop.create_future()
    order: list = []

    def on_data(data: bytes) -> None:
        got.extend(data)
        if got.endswith(b"end"):
            ended.set_result(None)

    server, client, transport = await urgent_connection(on_data)
    fd = transport.get_extra_info("socket").fileno()
    sent = bytearray()
    phase = {"signalled": False, "asked": False}

    def action(i: int) -> None:
        if not phase["signalled"]:
            phase["signalled"] = o_async(fd)
        elif not phase["asked"]:
            msg = b"%d," % i
            client.sendall(msg)
            sent.extend(msg)
            phase["asked"] = not o_async(fd)

    try:
        await backlog(order, lambda: phase["asked"], action)
        assert phase["signalled"], "the connection never got O_ASYNC"
        assert phase["asked"], "a busy connection kept O_ASYNC"
        client.sendall(b"end")
        sent.extend(b"end")
        await ended
    finally:
        client.close()
        transport.close()
        server.close()
        await server.wait_closed()
    assert bytes(got) == bytes(sent)
    assert loop.statistics().urgent_signals >= 1


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_closing_the_loop_gives_sigio_back(backend):
    """A loop that signals a quiet HIGH server's listener: closing the loop
    (the server still open) gives SIGIO its default disposition back (a
    stray SIGIO would otherwise end the process), and a new loop can
    signal again."""
    order: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with aem_loop.priority(HIGH):
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        fd = server.sockets[0].fileno()
        await backlog(order, lambda: o_async(fd), lambda i: None)
        assert o_async(fd), "never signalled"
        assert signal.getsignal(signal.SIGIO) not in (signal.SIG_DFL, signal.SIG_IGN)
        server.close()
        await server.wait_closed()

    for _ in range(2):
        aem_loop.run(main(), backend=backend)
        assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL


@pytest.mark.backends("selector")
def test_remove_reader_and_close_clear_o_async_and_restore_sigio():
    """A user's fd (a socketpair end) read under HIGH: signalled while quiet,
    its O_ASYNC goes when the reader is removed; with a reader again, closing
    the loop clears it and gives SIGIO back its default disposition (a stray
    SIGIO would otherwise end the process)."""
    a, b = socket.socketpair()
    loop = aem_loop.new_event_loop(backend="selector")
    order: list = []
    try:
        def read() -> None:
            order.append(a.recv(100))

        async def main() -> None:
            with aem_loop.priority(HIGH):
                loop.add_reader(a, read)
            await backlog(order, lambda: o_async(a.fileno()), lambda i: None)
            assert o_async(a.fileno()), "never signalled"
            loop.remove_reader(a)
            assert not o_async(a.fileno())
            with aem_loop.priority(HIGH):
                loop.add_reader(a, read)
            await backlog(order, lambda: o_async(a.fileno()), lambda i: None)
            b.send(b"x")  # while signalled: read at once, as ever
            await backlog(order, lambda: b"x" in order, lambda i: None)

        loop.run_until_complete(main())
        assert o_async(a.fileno())
        assert signal.getsignal(signal.SIGIO) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        loop.close()
        assert not o_async(a.fileno())
        assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
@pytest.mark.parametrize("why", ["thread", "handler", "option"])
def test_no_signals_outside_the_main_thread_nor_over_a_sigio_handler(backend, why):
    """A loop in another thread (Python runs signal handlers in the main
    thread only), while the program has a SIGIO handler of its own, or with
    the option urgent_signals=False: the urgent connection stays asked (no
    O_ASYNC, SIGIO left as it was), and its message is still read within a
    few steps of the backlog."""
    order: list = []
    stats: list = []

    def user_handler(signum: int, frame: object) -> None:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, client, transport = await urgent_connection(order.append)
        fd = transport.get_extra_info("socket").fileno()
        try:
            # 64 steps: well past the asks after which a main-thread loop signals
            await backlog(order, lambda: len(order) >= 64, lambda i: None)
            await read_when_asked(order, server, client, fd)
        finally:
            await close_urgent(server, client, transport)
        stats.append(loop.statistics())

    try:
        if why == "thread":
            t = threading.Thread(target=aem_loop.run, args=(main(),),
                                 kwargs={"backend": backend})
            t.start()
            t.join()
            assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL
        elif why == "handler":
            signal.signal(signal.SIGIO, user_handler)
            aem_loop.run(main(), backend=backend)
            assert signal.getsignal(signal.SIGIO) is user_handler
        else:
            aem_loop.run(main(), backend=backend, urgent_signals=False)
            assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGIO, signal.SIG_DFL)
    assert stats and stats[0].urgent_signals == 0
    sent = order.index("sent")
    assert b"x" in order[sent:sent + 8], order[sent:]


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_a_sigio_handler_set_while_the_loop_signals_takes_sigio_over(backend):
    """The program sets a SIGIO handler of its own while the loop signals a
    quiet urgent connection: the loop gives its signals up (the fds lose
    O_ASYNC, so the program's handler gets none of them) and asks again --
    the urgent message is still read within a few steps of the backlog --
    and the program's handler stays, after the loop too."""
    order: list = []
    got: list = []

    def user_handler(signum: int, frame: object) -> None:
        got.append(signum)

    async def main() -> None:
        server, client, transport = await urgent_connection(order.append)
        fd = transport.get_extra_info("socket").fileno()
        try:
            await backlog(order, lambda: o_async(fd), lambda i: None)
            assert o_async(fd), "never signalled"
            signal.signal(signal.SIGIO, user_handler)
            await backlog(order, lambda: not o_async(fd), lambda i: None)
            await read_when_asked(order, server, client, fd)
        finally:
            await close_urgent(server, client, transport)

    try:
        aem_loop.run(main(), backend=backend)
        assert signal.getsignal(signal.SIGIO) is user_handler
    finally:
        signal.signal(signal.SIGIO, signal.SIG_DFL)
    assert got == []
    sent = order.index("sent")
    assert b"x" in order[sent:sent + 8], order[sent:]


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_urgent_signals_option_must_be_a_bool(backend):
    with pytest.raises(TypeError, match="urgent_signals"):
        aem_loop.new_event_loop(backend=backend, urgent_signals="no")
