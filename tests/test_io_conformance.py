"""The AbstractEventLoop API on real sockets and processes, stock asyncio as reference."""

import asyncio
import hashlib
import os
import signal
import socket
import sys
import tempfile
import time

import pytest

import aem_loop

pytestmark = [pytest.mark.asyncio, pytest.mark.conformance]


async def test_tcp_streams_many_connections_no_loss_no_reorder():
    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()
        await w.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i):
        payload = hashlib.sha256(str(i).encode()).digest() * 4096  # 128 KiB
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(payload)
        await w.drain()
        w.write_eof()
        got = await r.read()
        w.close()
        await w.wait_closed()
        return got == payload

    assert all(await asyncio.gather(*(client(i) for i in range(20))))
    server.close()
    await server.wait_closed()


async def test_udp_roundtrip():
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t):
            self.t = t

        def datagram_received(self, data, addr):
            self.t.sendto(data[::-1], addr)

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.set_result(data)

    st, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    ct, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=st.get_extra_info("sockname")
    )
    ct.sendto(b"hello")
    assert await got == b"olleh"
    ct.close()
    st.close()


async def test_unix_socket_streams():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s")

        async def handle(r, w):
            w.write((await r.readline()).upper())
            await w.drain()
            w.close()

        server = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"abc\n")
        assert await r.readline() == b"ABC\n"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()


async def test_sock_methods():
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    csock = socket.socket()
    csock.setblocking(False)
    try:
        accept = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(csock, lsock.getsockname())
        conn, _ = await accept
        with conn:
            conn.setblocking(False)
            await loop.sock_sendall(csock, b"x" * 100_000)
            buf = bytearray()
            while len(buf) < 100_000:
                buf += await loop.sock_recv(conn, 65536)
            assert buf == b"x" * 100_000
            await loop.sock_sendall(conn, b"pong")
            b = bytearray(4)
            assert await loop.sock_recv_into(csock, b) == 4 and b == b"pong"
    finally:
        lsock.close()
        csock.close()


async def test_sendfile():
    loop = asyncio.get_running_loop()
    data = os.urandom(300_000)
    got = bytearray()
    done = loop.create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, d):
            got.extend(d)

        def connection_lost(self, exc):
            done.set_result(None)

    server = await loop.create_server(Sink, "127.0.0.1", 0)
    t, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        f.seek(0)
        assert await loop.sendfile(t, f) == len(data)
    t.close()
    await done
    assert bytes(got) == data
    server.close()
    await server.wait_closed()


async def test_subprocess_exec_and_shell():
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await p.communicate(b"hello")
    assert out == b"HELLO" and p.returncode == 0
    p = await asyncio.create_subprocess_shell("exit 3")
    assert await p.wait() == 3


async def test_signal_handler():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await got == "usr1"
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)


async def test_executor_and_threadsafe():
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
    fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "t"), loop)
    assert await asyncio.wrap_future(fut) == "t"
    await loop.shutdown_default_executor()


async def test_timers_never_early_and_ordered():
    loop = asyncio.get_running_loop()
    fired = []
    done = loop.create_future()
    t0 = loop.time()
    for i, d in enumerate([0.003, 0.001, 0.002, 0.001, 0.0]):
        loop.call_later(d, lambda i=i, d=d: fired.append((i, loop.time() - t0 >= d)))
    loop.call_later(0.004, done.set_result, None)
    h = loop.call_later(0.002, fired.append, "cancelled")
    h.cancel()
    await done
    assert [i for i, _ in fired] == [4, 1, 3, 2, 0]
    assert all(ok for _, ok in fired)


async def test_asyncgen_shutdown():
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    g = agen()
    assert await g.__anext__() == 1
    await asyncio.get_running_loop().shutdown_asyncgens()
    assert closed == [True]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_reader_removed_by_a_done_callback_runs_once_per_wait():
    """anyio's pattern: add_reader(fd, fut.set_result, None), removed in the
    future's done callback.  The reader must not run again before that
    callback, even while a backlog makes dispatch rounds end on their slice."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    a, b = socket.socketpair()
    a.setblocking(False)
    stop = False

    async def burn():
        while not stop:
            end = time.perf_counter() + 0.00005
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    with aem_loop.priority(60):  # on uvloop: from now on the core dispatches
        loop.call_soon(lambda: None)
    # a backlog at the waits' own level: rounds end on their time slice
    burners = [asyncio.create_task(burn()) for _ in range(50)]
    try:
        for _ in range(100):
            fut = loop.create_future()
            loop.add_reader(a, fut.set_result, None)
            fut.add_done_callback(lambda f: loop.remove_reader(a))
            b.send(b"x")
            await fut
            await asyncio.sleep(0)
            a.recv(10)
    finally:
        stop = True
        await asyncio.gather(*burners)
        a.close()
        b.close()
        loop.set_exception_handler(None)
    assert not errors, errors[:3]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_reader_of_a_closed_socket_removed_in_the_same_round_does_not_run():
    """Two sockets become readable in one poll; the reader that runs first
    closes the other socket and then removes its reader by the closed object.
    The other reader must not run (on the aem loops its activation is
    already queued: removing the reader has to cancel it)."""
    loop = asyncio.get_running_loop()
    with aem_loop.priority(60):  # on uvloop: from now on the core dispatches
        loop.call_soon(lambda: None)
    await asyncio.sleep(0)
    pairs = [socket.socketpair() for _ in range(2)]
    ran: list[int] = []
    done = loop.create_future()

    def reader(i: int) -> None:
        ran.append(i)
        mine, other = pairs[i][0], pairs[1 - i][0]
        other.close()
        loop.remove_reader(other)
        loop.remove_reader(mine)
        done.set_result(None)

    try:
        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)
            loop.add_reader(a, reader, i)
        for _, b in pairs:
            b.send(b"x")  # both readable before the loop polls again
        await done
        await asyncio.sleep(0)
    finally:
        for a, b in pairs:
            if a.fileno() != -1:
                loop.remove_reader(a)
            a.close()
            b.close()
    assert len(ran) == 1, ran


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_reader_writer_invalid_file_object():
    loop = asyncio.get_running_loop()
    with aem_loop.priority(60):  # on uvloop: the core's reader path, not the fast one
        loop.call_soon(lambda: None)
    await asyncio.sleep(0)
    for method in (loop.add_reader, loop.add_writer):
        with pytest.raises(ValueError, match="Invalid file object"):
            method(object(), lambda: None)
    for method in (loop.remove_reader, loop.remove_writer):
        with pytest.raises(ValueError, match="Invalid file object"):
            method(object())


@pytest.mark.backends("selector")
async def test_selector_reader_cancelled_in_place_leaves_the_io_count():
    """A reader's handle cancelled in place (not through remove_reader) stays
    counted at its level until it leaves the selector: removed when its fd
    is next ready, or by remove_reader; then its level counts no I/O."""
    loop = asyncio.get_running_loop()
    counts = loop._aem._io_counts
    level = 70
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        before = counts[level]
        with aem_loop.priority(level):
            first = loop._add_reader(a.fileno(), lambda: None)
            second = loop._add_reader(c.fileno(), lambda: None)
        assert counts[level] == before + 2
        first.cancel()
        second.cancel()
        b.send(b"x")  # ready: the loop finds the cancelled handle and removes it
        while loop._aem_key(a.fileno()) is not None:
            await asyncio.sleep(0)
        assert counts[level] == before + 1
        assert loop.remove_reader(c.fileno())
        assert counts[level] == before
    finally:
        for s_ in (a, b, c, d):
            s_.close()


@pytest.mark.backends("selector")
async def test_selector_transport_reads_without_a_large_allocation_per_read():
    """The selector backend's socket transports read into the loop's buffer:
    no 256 KiB bytes object per read (asyncio's recv(max_size)); the protocol
    still gets exactly the bytes that arrived, in order."""
    import tracemalloc

    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    acked: asyncio.Queue = asyncio.Queue()

    class P(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t

        def data_received(self, data):
            got.append(data)
            acked.put_nowait(len(data))

    server = await loop.create_server(P, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(50):
            w.write(b"%05d" % i)
            await acked.get()  # each message read on its own
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert b"".join(got) == b"".join(b"%05d" % i for i in range(50))
    assert peak < 128 * 1024, peak
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()


async def test_set_protocol_switches_between_plain_and_buffered_reads():
    """transport.set_protocol() mid-connection, plain -> BufferedProtocol ->
    plain: each message goes to the protocol set when it arrives, whole and
    in order (the selector backend reads plain protocols on a path of its own)."""
    loop = asyncio.get_running_loop()
    got: list = []
    arrived: asyncio.Queue = asyncio.Queue()
    accepted: asyncio.Future = loop.create_future()

    class Plain(asyncio.Protocol):
        def __init__(self, name="plain"):
            self.name = name

        def connection_made(self, t):
            accepted.set_result(t)

        def data_received(self, data):
            got.append((self.name, bytes(data)))
            arrived.put_nowait(None)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(64)

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            got.append(("buffered", bytes(self.buf[:nbytes])))
            arrived.put_nowait(None)

    server = await loop.create_server(Plain, "127.0.0.1", 0)
    _r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    t = await accepted
    try:
        for proto, msg in ((None, b"one"), (Buffered(), b"two"), (Plain("again"), b"three")):
            if proto is not None:
                t.set_protocol(proto)
            w.write(msg)
            await arrived.get()
    finally:
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
    assert got == [("plain", b"one"), ("buffered", b"two"), ("again", b"three")]


async def test_stream_reader_protocols_get_every_read_whatever_their_class():
    """A stock StreamReaderProtocol, a subclass with its own data_received
    and one whose instance is given a data_received of its own each
    get every message, in order, through the calls asyncio makes (the
    selector backend feeds a stock one's reader without its data_received).
    (uvloop looks data_received up once, when the protocol is set: the
    instance's is given in __init__.)"""
    msgs = [os.urandom(n) for n in (1, 700, 70_000, 5)]
    seen: dict[str, list[bytes]] = {"subclass": [], "instance": []}

    class Sub(asyncio.StreamReaderProtocol):
        def data_received(self, data):
            seen["subclass"].append(bytes(data))
            super().data_received(data)

    class Patched(asyncio.StreamReaderProtocol):
        def __init__(self, *args):
            super().__init__(*args)
            own = self.data_received

            def data_received(data):
                seen["instance"].append(bytes(data))
                own(data)

            self.data_received = data_received

    for name, cls in (("stock", asyncio.StreamReaderProtocol), ("subclass", Sub),
                      ("instance", Patched)):
        assert await _stream_server_gets(cls, msgs) == b"".join(msgs), name
        if name != "stock":
            assert b"".join(seen[name]) == b"".join(msgs), name


async def _stream_server_gets(cls: type, msgs: list[bytes],
                              transports: list | None = None) -> bytes:
    """What a stream server whose protocol is *cls* reads from a client
    that sends *msgs* one at a time (each once the previous one arrived);
    its connection's transport is appended to *transports*."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    acked: asyncio.Queue = asyncio.Queue()
    done: asyncio.Future = loop.create_future()
    ends = {sum(map(len, msgs[:i + 1])) for i in range(len(msgs))}

    async def handle(r, w):
        if transports is not None:
            transports.append(w.transport)
        while data := await r.read(1 << 20):
            got.extend(data)
            if len(got) in ends:
                acked.put_nowait(None)
        w.close()
        done.set_result(None)

    server = await loop.create_server(lambda: cls(asyncio.StreamReader(), handle),
                                      "127.0.0.1", 0)
    _r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    for m in msgs:
        w.write(m)
        await acked.get()
    w.close()
    await w.wait_closed()
    await done
    server.close()
    await server.wait_closed()
    return bytes(got)


async def test_a_stream_whose_reader_was_collected_drops_its_data_quietly():
    """A StreamReaderProtocol whose reader nobody holds any more (it keeps
    only a weak reference): the data that arrives is dropped, no error is
    reported, the peer's EOF still arrives, and the connection closes."""
    import gc

    loop = asyncio.get_running_loop()
    errors: list = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    eof: asyncio.Future = loop.create_future()
    lost: asyncio.Future = loop.create_future()

    class P(asyncio.StreamReaderProtocol):
        def eof_received(self):
            eof.set_result(None)
            return super().eof_received()

        def connection_lost(self, exc):
            super().connection_lost(exc)
            lost.set_result(exc)

    c, srv = _tcp_pair_with_room()
    with c:
        reader = asyncio.StreamReader()
        proto = P(reader)
        t, _ = await loop.connect_accepted_socket(lambda: proto, srv)
        del reader
        gc.collect()
        c.sendall(b"x" * 100_000)
        c.shutdown(socket.SHUT_WR)
        await eof
        t.close()
        assert await lost is None
    loop.set_exception_handler(None)
    assert errors == []


@pytest.mark.backends("selector")
async def test_selector_transport_feeds_a_stock_stream_reader_directly():
    """The selector backend's transport feeds a stock StreamReaderProtocol's
    reader itself and calls any other protocol's data_received."""
    transports: list = []

    class Sub(asyncio.StreamReaderProtocol):
        def data_received(self, data):
            super().data_received(data)

    for cls in (asyncio.StreamReaderProtocol, Sub):
        assert await _stream_server_gets(cls, [b"abc"], transports) == b"abc"
    assert [t._aem_stream for t in transports] == [True, False]


class _Recorder(asyncio.Protocol):
    """Records what arrives (data, None for EOF) and how the connection ended."""

    def __init__(self) -> None:
        self.got: list = []
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.got.append(bytes(data))

    def eof_received(self):
        self.got.append(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def _tcp_pair_with_room() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, accepted) whose buffers hold
    a few hundred KiB, so that what the client sends waits, whole, in the
    accepted socket."""
    with socket.socket() as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # inherited
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        c = socket.create_connection(lsock.getsockname())
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        srv, _ = lsock.accept()
    srv.setblocking(False)
    return c, srv


async def test_a_read_takes_what_waits_up_to_max_size_in_one_call():
    """160 KiB waiting in the socket when the transport first reads: one
    data_received with all of it, as asyncio's one recv(max_size) (the
    selector backend reads 64 KiB first and the rest into its buffer), then
    the peer's EOF."""
    payload = os.urandom(160 * 1024)
    p = _Recorder()
    c, srv = _tcp_pair_with_room()
    with c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        t, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: p, srv)
        assert await p.lost is None
        t.close()
    assert p.got == [payload, None]


async def test_a_reset_after_data_in_one_read_reports_the_data_then_the_error():
    """Data then a reset (RST) waiting together: the protocol gets the data,
    then connection_lost with ConnectionResetError, as on asyncio (whose
    next recv reports the reset).  64 KiB exactly: the selector backend's
    first read comes full, and its second finds the reset."""
    payload = os.urandom(64 * 1024)
    p = _Recorder()
    c, srv = _tcp_pair_with_room()
    c.sendall(payload)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # linger 0: a reset
    t, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: p, srv)
    exc = await p.lost
    t.close()
    assert b"".join(p.got) == payload
    assert isinstance(exc, ConnectionResetError), exc


async def test_a_reset_behind_data_the_protocol_paused_on_waits_for_resume():
    """Data then a reset waiting together, and a protocol that pauses
    reading when the data arrives: the reset is not reported while it is
    paused (asyncio reads no more until resumed); once resumed, the next
    read reports it (connection_lost with ConnectionResetError)."""
    loop = asyncio.get_running_loop()
    payload = os.urandom(64 * 1024)
    checked: asyncio.Future = loop.create_future()

    class Pausing(_Recorder):
        def connection_made(self, transport):
            self.t = transport

        def data_received(self, data):
            super().data_received(data)
            if not checked.done():
                self.t.pause_reading()
                # after the read that gave this data, what became of the transport
                loop.call_soon(lambda: checked.done() or checked.set_result(self.t.is_closing()))

    p = Pausing()
    c, srv = _tcp_pair_with_room()
    c.sendall(payload)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # linger 0: a reset
    t, _ = await loop.connect_accepted_socket(lambda: p, srv)
    assert await checked is False
    assert not p.lost.done()
    t.resume_reading()
    exc = await p.lost
    t.close()
    assert b"".join(p.got) == payload
    assert isinstance(exc, ConnectionResetError), exc


async def test_subprocess_user_group_umask_as_stock() -> None:
    """Popen's user/group/extra_groups/umask reach the child on every loop
    (uvloop's own spawn rejects them; the uvloop backend applies them)."""
    kw: dict = {"umask": 0o027}
    want_ids = None
    if os.geteuid() == 0:  # changing ids needs root; umask does not
        kw.update(user=65534, group=65534, extra_groups=[65534])
        want_ids = ["65534", "65534", "65534"]
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "id -u; id -g; id -G; umask", stdout=asyncio.subprocess.PIPE, **kw)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    lines = out.decode().split()
    assert lines[-1] == "0027"
    if want_ids is not None:
        assert lines[:3] == want_ids
    proc = await asyncio.create_subprocess_shell("umask", stdout=asyncio.subprocess.PIPE,
                                                 umask=0o077)
    out, _ = await proc.communicate()
    assert out.decode().strip() == "0077"


async def test_subprocess_bad_ids_fail_as_stock() -> None:
    with pytest.raises(KeyError):
        await asyncio.create_subprocess_exec("true", user="no-such-user-aem-xyz")
    with pytest.raises(TypeError, match="User must be a string or an integer"):
        await asyncio.create_subprocess_exec("true", user=1.5)
