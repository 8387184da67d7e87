"""Priority decided from the data: aem_loop.classify and aiohttp route_priorities."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import aiohttp
import pytest
import trustme
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

import aem_loop
import aem_loop.aiohttp
from aem_loop import Priority
from aem_loop.backends.uvhandoff import CHECK_EVERY
from aem_loop.events.classify import HTTPScanner
from conftest import backend_of, urgent_connects_in_a_backlog


def _urgent(data: bytes) -> int | None:
    return Priority.HIGH if data.startswith(b"urgent") else None


class _Recorder(asyncio.Protocol):
    def __init__(self, log: list, acks: asyncio.Queue) -> None:
        self.log = log
        self.acks = acks

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.log.append((data, aem_loop.current_priority(), aem_loop.effective_priority()))
        self.t.write(b"k")

    def connection_lost(self, exc):
        self.log.append(("lost", aem_loop.current_priority(), None))
        self.acks.put_nowait(None)


async def _serve_and_send(chunks: list[bytes], classified: bool) -> list:
    loop = asyncio.get_running_loop()
    log: list = []
    done: asyncio.Queue = asyncio.Queue()
    if classified:
        with aem_loop.classify(_urgent):
            server = await loop.create_server(lambda: _Recorder(log, done), "127.0.0.1", 0)
    else:
        server = await loop.create_server(lambda: _Recorder(log, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for c in chunks:  # one chunk at a time: each is read on its own
        w.write(c)
        assert await r.readexactly(1) == b"k"
    w.close()
    await w.wait_closed()
    await done.get()
    server.close()
    await server.wait_closed()
    return log


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
async def test_classify_runs_each_chunk_at_the_priority_its_data_gets():
    log = await _serve_and_send([b"bulk 1", b"urgent 2", b"bulk 3"], classified=True)
    assert [(d, p) for d, p, _ in log] == [
        (b"bulk 1", Priority.NORMAL), (b"urgent 2", Priority.HIGH), (b"bulk 3", Priority.NORMAL),
        ("lost", Priority.NORMAL),
    ]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_without_a_classifier_the_connection_keeps_its_priority():
    log = await _serve_and_send([b"bulk 1", b"urgent 2"], classified=False)
    assert [p for _, p, _ in log] == [Priority.NORMAL] * 3


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
async def test_classify_checks_the_classifiers_result():
    loop = asyncio.get_running_loop()
    errors: list = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    log: list = []
    done: asyncio.Queue = asyncio.Queue()
    with aem_loop.classify(lambda data: 500):
        server = await loop.create_server(lambda: _Recorder(log, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"x")
    assert await r.readexactly(1) == b"k"
    w.close()
    await done.get()
    server.close()
    await server.wait_closed()
    assert log[0][1] == Priority.NORMAL  # a bad result keeps the connection's own
    assert isinstance(errors[0]["exception"], ValueError)
    with pytest.raises(TypeError):
        aem_loop.classify(3).__enter__()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="messages"):
        aem_loop.classify(_urgent, messages="xml").__enter__()


def _requests(specs):
    out = []
    for path, body, kind in specs:
        if kind == "chunked":
            enc = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\nX-T: 1\r\n\r\n"
            out.append(f"POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                       + enc)
        elif kind == "length":
            out.append(f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                       + body)
        else:  # a GET: no body
            out.append(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["/a", "/health", "/b/c"]), st.binary(max_size=40),
                          st.sampled_from(["length", "chunked", "get"])), max_size=6),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_http_scanner_finds_every_head_whatever_the_chunking_and_bodies(specs, cuts):
    """Each request head, byte for byte, once, in order: whether a chunk holds
    a whole head (taken without a copy), part of one, or several."""
    reqs = _requests(specs)
    data = b"".join(reqs)
    points = sorted({c % (len(data) + 1) for c in cuts})
    scanner = HTTPScanner()
    heads, prev = [], 0
    for p in [*points, len(data)]:
        heads += scanner.feed(data[prev:p])
        prev = p
    assert heads == [r[:r.index(b"\r\n\r\n") + 4] for r in reqs]
    assert all(type(h) is bytes for h in heads)


# -- aiohttp ------------------------------------------------------------------------------

BULK_CONNECTIONS = 16
BULK_PER_CONNECTION = 3


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _flood_and_probe(route: bool, probe_on: str) -> tuple[list, bytes]:
    """Bulk requests from many connections; the health probe is sent the
    moment the first bulk request runs (so the whole flood is queued ahead
    of it) on a connection of its own ("other"), on a keep-alive connection
    that carried bulk traffic before ("same"), or on a connection opened
    only then ("new": its accept is behind the flood too).  Returns the
    server's completion order and the probe's answer."""
    done: list[str] = []
    probe: socket.socket | None = None  # set once the flood is on its way
    new_probe: list[socket.socket] = []

    async def bulk(request):
        nonlocal probe
        if probe is not None:  # the first bulk request: the flood is queued now
            if probe_on == "new":
                new_probe.append(socket.create_connection(("127.0.0.1", port)))
                new_probe[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            else:
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            probe_sent.set()
            probe = None
        _busy(0.002)  # CPU work without a yield: only priorities reorder it
        done.append("bulk")
        return web.Response(text="bulk")

    async def health(request):
        done.append("health")
        return web.Response(text=f"ok {aem_loop.current_priority()}")

    app = web.Application()
    app.router.add_get("/bulk", bulk)
    app.router.add_get("/health", health)
    if route:
        aem_loop.aiohttp.route_priorities(app, {"/health": Priority.HIGH})
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    probe_sent = asyncio.Event()
    probe_sock = socket.create_connection(("127.0.0.1", port))
    if probe_on == "same":  # a keep-alive connection that carried bulk traffic before
        probe_sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.to_thread(_read_response, probe_sock)
        done.clear()
    flood = []
    for _ in range(BULK_CONNECTIONS):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        flood.append((r, w))
    probe = probe_sock
    for _r, w in flood:
        w.write(b"GET /bulk HTTP/1.1\r\nHost: x\r\n\r\n" * BULK_PER_CONNECTION)
    await probe_sent.wait()
    answer = await asyncio.to_thread(_read_response, new_probe[0] if new_probe else probe_sock)
    for r, w in flood:
        for _ in range(BULK_PER_CONNECTION):
            await r.readuntil(b"bulk")
        w.close()
        await w.wait_closed()
    probe_sock.close()
    for sock in new_probe:
        sock.close()
    await runner.cleanup()
    assert probe_sent.is_set()
    return done, answer


def _read_response(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return body


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
@pytest.mark.parametrize("probe_on", ["other", "same", "new"])
async def test_route_priorities_answers_the_urgent_request_before_the_flood(probe_on):
    done, answer = await _flood_and_probe(route=True, probe_on=probe_on)
    assert answer == f"ok {int(Priority.HIGH)}".encode()
    total = BULK_CONNECTIONS * BULK_PER_CONNECTION
    assert done.count("bulk") == total
    # only bulk requests already under way when the probe arrived go first:
    # 1-2 on 3.11, 3-6 on 3.12+ (aiohttp starts tasks eagerly there, inside
    # steps already dispatched); without priorities it is 32-48 of 49.  On
    # the uvloop backend a checkpoint among the hand-offs notices the probe,
    # at the stride learned from the quick requests before the flood: up to
    # CHECK_EVERY bulk requests may go first (13-14 seen).
    bound = 8 if backend_of(asyncio.get_running_loop()) == "selector" else 2 + CHECK_EVERY
    assert done.index("health") <= bound, done.index("health")


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client
    context that trusts it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
async def test_route_priorities_over_tls(tls, close, caplog):
    """An HTTPS app (the classified protocol under asyncio's or uvloop's SSL
    layer): each request's handler runs at its route's priority, on
    keep-alive connections or one request per connection, and every
    connection ends without a complaint from the SSL layer or the loop."""
    server_ctx, client_ctx = tls

    async def level(request):
        return web.Response(text=str(aem_loop.current_priority()))

    app = web.Application()
    app.router.add_get("/", level)
    app.router.add_get("/health", level)
    aem_loop.aiohttp.route_priorities(app, {"/health": Priority.HIGH})
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    port = runner.addresses[0][1]
    got = []
    with caplog.at_level(logging.WARNING):
        connector = aiohttp.TCPConnector(ssl=client_ctx, force_close=close)
        async with aiohttp.ClientSession(connector=connector) as session:
            for path in ("/", "/health", "/", "/health"):
                async with session.get(f"https://127.0.0.1:{port}{path}") as resp:
                    got.append(await resp.text())
        await runner.cleanup()
    assert got == ["50", str(int(Priority.HIGH))] * 2
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
@pytest.mark.timeout(60, method="thread")  # a livelock runs callbacks: only a thread can end it
async def test_a_queued_end_of_file_under_tls_does_not_upset_the_ssl_layer(tls, caplog):
    """A classified TLS connection whose data and end of file arrive while a
    more urgent task never blocks: both are queued at the connection's
    level, in order, and run by aging; the SSL layer (which closes after
    the end of the stream whatever eof_received says) gets no "returning
    true" to warn about.  (On the uvloop backend the callbacks it holds
    behind such a task also age: before, the connection never ended.)"""
    server_ctx, client_ctx = tls
    loop = asyncio.get_running_loop()
    got: list = []
    lost = loop.create_future()

    class P(asyncio.Protocol):
        def data_received(self, data):
            got.append(data)

        def eof_received(self):
            got.append("eof")

        def connection_lost(self, exc):
            lost.set_result(exc)

    with aem_loop.classify(_urgent):
        server = await loop.create_server(P, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    stop = False

    async def busy_high() -> None:  # always queued above the connection
        with aem_loop.priority(Priority.HIGH):
            while not stop:
                await asyncio.sleep(0)

    def client() -> None:
        with (socket.create_connection(("127.0.0.1", port)) as raw,
              client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock):
            tls_sock.sendall(b"hello")
            tls_sock.unwrap()  # close_notify: the server's end of file

    with caplog.at_level(logging.WARNING):
        spinner = asyncio.ensure_future(busy_high())
        try:
            await asyncio.gather(asyncio.to_thread(client), lost)
        finally:
            stop = True
            await spinner
        server.close()
        await server.wait_closed()
    assert got == [b"hello", "eof"]
    assert lost.result() is None
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_without_route_priorities_the_app_is_served_as_on_stock_asyncio():
    done, answer = await _flood_and_probe(route=False, probe_on="other")
    assert answer == f"ok {int(Priority.NORMAL)}".encode()
    assert sorted(done) == ["bulk"] * (BULK_CONNECTIONS * BULK_PER_CONNECTION) + ["health"]


def test_route_priorities_checks_its_input():
    app = web.Application()
    with pytest.raises(ValueError, match="starting with '/'"):
        aem_loop.aiohttp.route_priorities(app, {"health": Priority.HIGH})
    with pytest.raises(ValueError, match="priority of route"):
        aem_loop.aiohttp.route_priorities(app, {"/health": 120})
    with pytest.raises(TypeError, match="Application"):
        aem_loop.aiohttp.route_priorities(object(), {})  # type: ignore[arg-type]
    table = aem_loop.aiohttp.route_priorities(app, {"/a": 60, "/a/b": 70})
    assert table.level("/a/b/c") == 70 and table.level("/a/x") == 60 and table.level("/") is None
    assert table.classify_head(b"GET /a/b?q HTTP/1.1\r\n\r\n") == 70
    assert table.classify_head(b"GET http://h/a HTTP/1.1\r\n\r\n") == 60
    with pytest.raises(RuntimeError, match="already"):
        aem_loop.aiohttp.route_priorities(app, {"/a": 60})


def test_a_route_table_answers_alike_from_what_it_remembers_and_forgets_in_time():
    table = aem_loop.aiohttp.RouteTable({"/health": Priority.HIGH, "/a/b": 70})
    heads = [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /a/b/c?d HTTP/1.1\r\n\r\n",
             b"GET / HTTP/1.1\r\n\r\n", b"GET /a HTTP/1.1\r\n\r\n", b"BAD\r\n\r\n",
             b"GET /health HTTP/1.1"]  # no line end: the whole is the request line
    want = [Priority.HIGH, 70, None, None, None, Priority.HIGH]
    for _ in range(3):  # first seen, then remembered
        assert [table.classify_head(h) for h in heads] == want
        assert [table.level(p) for p in ("/health/x", "/a/b", "/", "/a")] == [
            Priority.HIGH, 70, None, None]
    for i in range(5000):  # request lines and paths from the network: memory stays bounded
        assert table.classify_head(f"GET /x{i} HTTP/1.1\r\n\r\n".encode()) is None
        assert table.level(f"/x{i}") is None
    assert len(table._lines) <= 1024 and len(table._paths) <= 1024
    assert [table.classify_head(h) for h in heads] == want


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
async def test_spent_slices_ask_the_classified_connections_before_polling():
    """A classified connection (idle) beside a default backlog of long
    callbacks: its urgent message, sent by the 10th, is handled right after
    that one, before the rest; while it has no data, a spent slice asks the
    kernel about the classified fds (one epoll set) instead of polling every
    fd (selector) or returning to libuv (uvloop): far fewer polls than the
    20 spent slices."""
    loop = asyncio.get_running_loop()
    order: list = []
    got = loop.create_future()

    class Urgent(asyncio.Protocol):
        def data_received(self, data):
            order.append((data, aem_loop.current_priority()))
            got.set_result(None)

    with aem_loop.classify(_urgent):
        server = await loop.create_server(Urgent, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    await asyncio.sleep(0.05)  # accepted, idle
    slices0 = loop.statistics().slices

    def busy(i: int) -> None:
        _busy(0.001)  # several time slices
        order.append(i)
        if i == 9:
            client.send(b"urgent")

    polls = loop.statistics().polls
    for i in range(20):
        loop.call_soon(busy, i)
    await got
    while len(order) < 21:
        await asyncio.sleep(0)
    extra = loop.statistics().polls - polls
    spent = loop.statistics().slices - slices0
    client.close()
    server.close()
    await server.wait_closed()
    assert order.index((b"urgent", Priority.HIGH)) == 10  # right after the one that sent it
    assert [x for x in order if isinstance(x, int)] == list(range(20))
    assert spent >= 10, spent
    assert extra < 8, (extra, spent)


async def _urgent_server(how: str, protocol: type) -> tuple[asyncio.AbstractServer, socket.socket]:
    """A server of *protocol*, classified (urgent messages at HIGH) or made
    under HIGH, and a client socket connected to it."""
    loop = asyncio.get_running_loop()
    if how == "classified":
        with aem_loop.classify(_urgent):
            server = await loop.create_server(protocol, "127.0.0.1", 0)
    else:
        with aem_loop.priority(Priority.HIGH):
            server = await loop.create_server(protocol, "127.0.0.1", 0)
    return server, socket.create_connection(server.sockets[0].getsockname())


@pytest.mark.parametrize("how", ["classified", "HIGH server"])
def test_a_round_about_to_end_leaves_classified_connections_to_its_poll(how):
    """A round of two callbacks of 1.2 time slices each (a loop with 2 ms
    slices): a classified connection's message sent by the first is read by
    the poll at the round's end (the job level waits for a round expected
    to end within 2.5 slices), while a server made under HIGH is asked at
    the slice the first callback spent, as in long rounds
    (test_spent_slices_ask_the_classified_connections_before_polling).
    The first callback would have to overrun by 1.3 slices (2.6 ms) for the
    round to look longer than that."""
    aem_loop.priority(Priority.LOW)  # a program that uses priorities: leveled dispatch
    loop = aem_loop.new_event_loop(backend="selector", time_slice=0.002)
    order: list = []

    async def main() -> None:
        got = loop.create_future()
        ran = loop.create_future()
        lost = loop.create_future()

        class Urgent(asyncio.Protocol):
            def data_received(self, data):
                order.append(data)
                got.set_result(None)

            def connection_lost(self, exc):
                lost.set_result(None)

        server, client = await _urgent_server(how, Urgent)
        await asyncio.sleep(0.05)  # accepted, idle

        def busy(i: int) -> None:
            _busy(0.0024)
            order.append(i)
            if i == 0:
                client.send(b"urgent")
            else:
                ran.set_result(None)

        for i in range(2):
            loop.call_soon(busy, i)
        await asyncio.gather(got, ran)
        client.close()
        await lost  # the server's side read the end of the stream
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    if how == "classified":
        assert order == [0, 1, b"urgent"]
    else:
        assert order == [0, b"urgent", 1]


@pytest.mark.asyncio
@pytest.mark.backends("uvloop")
@pytest.mark.parametrize("how", ["classified", "HIGH server"])
async def test_an_urgent_message_waits_about_one_long_hand_off(how):
    """uvloop backend: callbacks queued from a default-level protocol
    callback go straight to uvloop's queue (hand-offs), a batch that runs
    without a poll; while an urgent server's fds are watched, checkpoints
    among them ask whether one has data.  Once callbacks have been seen to
    take longer than a time slice, checkpoints come after every one of them
    (not after every 16th, which short ones get): urgent messages sent by the
    30th and the 37th of a batch are each handled right after that callback
    or the next (with a checkpoint every 16th, at most one of them could)."""
    loop = asyncio.get_running_loop()
    aem_loop.priority(Priority.HIGH)  # a program that uses priorities: leveled dispatch
    order: list = []
    got = loop.create_future()
    warm = loop.create_future()

    class Urgent(asyncio.Protocol):
        def data_received(self, data):
            order.append((data, aem_loop.current_priority()))
            if data.endswith(b"urgent 2"):  # (both at once if read late)
                got.set_result(None)

    server, client = await _urgent_server(how, Urgent)

    def busy(i: int) -> None:
        _busy(0.001)  # several time slices
        order.append(i)
        if i in (30, 37):
            client.send(b"urgent 1" if i == 30 else b"urgent 2")
        elif i == -1:
            warm.set_result(None)

    class Starter(asyncio.Protocol):
        def data_received(self, data):  # called by uvloop: its call_soon hands off
            for i in range(-20, 0) if data == b"warm" else range(60):
                loop.call_soon(busy, i)

    starter = await loop.create_server(Starter, "127.0.0.1", 0)
    go = socket.create_connection(starter.sockets[0].getsockname())
    await asyncio.sleep(0.05)  # both accepted, idle
    go.send(b"warm")  # a first batch: the checkpoints learn how long callbacks take
    await warm
    order.clear()
    go.send(b"go")
    await got
    while order[-1] != 59:  # the batch done
        await asyncio.sleep(0)
    for s in (client, go):
        s.close()
    for srv in (server, starter):
        srv.close()
        await srv.wait_closed()
    assert [x for x in order if isinstance(x, int)] == list(range(60))
    assert order.index((b"urgent 1", Priority.HIGH)) in (31, 32), order
    assert order.index((b"urgent 2", Priority.HIGH)) in (39, 40), order


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
async def test_a_new_connection_to_a_classified_server_is_accepted_before_a_backlog():
    """A classified server beside 300 default callbacks of 0.2 ms queued from
    I/O: a client connects at the 10th.  The connection is made long before
    the backlog ends (on the uvloop backend a checkpoint finds the listener
    ready and holds uvloop's queue; the connection_made that libuv's poll
    queues then goes first), and the backlog runs in order."""
    order = await urgent_connects_in_a_backlog(300, 0.0002, 1, lambda i, _: i == 10,
                                               under=lambda: aem_loop.classify(_urgent))
    assert [x for x in order if isinstance(x, int)] == list(range(300))
    marks = {x: order.index(x) for x in order if isinstance(x, str)}
    assert marks["accepted-1"] - marks["connected-1"] < 60, marks


@pytest.mark.asyncio
@pytest.mark.backends("selector", "uvloop")
async def test_connection_lost_runs_after_what_connection_made_queued():
    """A client that connects and closes at once: the protocol's own queued
    work (aiohttp starts its request loop this way) runs before connection_lost,
    as on stock asyncio, though the transport ends the connection at job level."""
    loop = asyncio.get_running_loop()
    aem_loop.priority(Priority.HIGH)  # a program that uses priorities: leveled dispatch
    order: list[str] = []
    lost = loop.create_future()

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            loop.call_soon(order.append, "first step")

        def connection_lost(self, exc):
            order.append("lost")
            lost.set_result(None)

    with aem_loop.classify(_urgent):
        server = await loop.create_server(P, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.close()  # before the server has accepted it: EOF is there at once
    await lost
    assert order == ["first step", "lost"]
    server.close()
    await server.wait_closed()



@pytest.mark.asyncio
@pytest.mark.conformance
@pytest.mark.parametrize("leveled", [False, True])
async def test_a_close_by_the_protocol_calls_connection_lost_in_stock_order(leveled):
    """The protocol closes its transport from its own callback, then queues
    more work: connection_lost comes first, as on stock asyncio (the
    transport queued it first); the client sees the answer and the end."""
    loop = asyncio.get_running_loop()
    if leveled:
        aem_loop.priority(Priority.HIGH)  # a program that uses priorities
    order: list[str] = []
    done = loop.create_future()

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport

        def data_received(self, data):
            self.t.write(data.upper())
            self.t.close()
            loop.call_soon(order.append, "queued after close")
            loop.call_soon(done.set_result, None)

        def connection_lost(self, exc):
            order.append("lost")

    with aem_loop.classify(_urgent):
        server = await loop.create_server(P, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"ping")
    assert await r.read() == b"PING"  # the answer, then end of file
    await done
    assert order == ["lost", "queued after close"]
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()

async def _send_while_queued(message: bytes) -> list[tuple[str, int]]:
    """A classified server's connection receives *message*, sent by a
    callback that then queues another: the order (and priority) in which
    the protocol's data_received and that callback run."""
    loop = asyncio.get_running_loop()
    order: list[tuple[str, int]] = []
    made = loop.create_future()
    got = loop.create_future()

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.set_result(None)

        def data_received(self, data):
            order.append((data.decode(), aem_loop.current_priority()))
            got.set_result(None)

    def queued() -> None:
        order.append(("queued", aem_loop.current_priority()))

    with aem_loop.classify(_urgent):
        server = await loop.create_server(P, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        await made

        def send_then_queue() -> None:
            client.sendall(message)  # on loopback: readable at the next poll
            loop.call_soon(queued)

        loop.call_soon(send_then_queue)
        await got
        while len(order) < 2:
            await asyncio.sleep(0)
    server.close()
    await server.wait_closed()
    return order


@pytest.mark.asyncio
@pytest.mark.conformance
@pytest.mark.backends("asyncio", "selector")
@pytest.mark.parametrize("leveled", [False, True])
async def test_a_message_that_is_not_urgent_reaches_the_protocol_in_its_turn(leveled):
    """A classified connection's message that is not urgent reaches the
    protocol behind the callbacks queued before it arrived, as on stock
    asyncio, though the selector backend reads it ahead of them (at job
    level, to classify it)."""
    if leveled:
        aem_loop.priority(Priority.HIGH)  # a program that uses priorities
    assert await _send_while_queued(b"plain") == [("queued", Priority.NORMAL),
                                                   ("plain", Priority.NORMAL)]


@pytest.mark.asyncio
@pytest.mark.backends("selector")
async def test_an_urgent_message_reaches_the_protocol_ahead_of_the_queue():
    assert await _send_while_queued(b"urgent") == [("urgent", Priority.HIGH),
                                                    ("queued", Priority.NORMAL)]


_RUN_APP = r'''
import asyncio, socket, sys
from aiohttp import web
import aem_loop, aem_loop.aiohttp

async def health(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{aem_loop.current_priority()} {type(loop).__module__}")

app = web.Application()
app.router.add_get("/health", health)
aem_loop.aiohttp.route_priorities(app, {"/health": aem_loop.Priority.HIGH})
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, loop=aem_loop.new_event_loop(backend=sys.argv[1]),
            print=lambda *args: print("serving", flush=True))
'''


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_route_priorities_with_web_run_app(backend):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _RUN_APP, backend], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert proc.stdout.readline() == "serving\n"
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            body = _read_response(s)
        assert body == f"{int(Priority.HIGH)} aem_loop.backends.".encode() + (
            b"selector" if backend == "selector" else b"uv")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
    assert code == 0
