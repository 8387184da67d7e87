"""AEMhttpd on real sockets, both backends: keep-alive, pipelining, every
error status, hostile paths, slowloris, a client that stops reading,
graceful shutdown, priorities from the route table."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aem_loop import Priority
from aem_loop.httpd import HTTPServer
from conftest import ends_cleanly, free_port, running

BIG = 300_000  # over sendfile_min: sent with os.sendfile


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<h1>index</h1>\n")
    (root / "a.txt").write_bytes(b"A" * 10)
    (root / "b.txt").write_bytes(b"B" * 20)
    (root / "sub" / "index.html").write_bytes(b"sub index\n")
    (root / "sub" / "c.json").write_bytes(b'{"c": 1}')
    (root / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256))
    (root / "with space.txt").write_bytes(b"spaced")
    (tmp_path / "secret.txt").write_bytes(b"TOP SECRET")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inside").symlink_to(root / "a.txt")
    return root


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = b"" if head_request or status == 304 else await reader.readexactly(n)
    return Response(status, headers, body)


async def started(root, **kw) -> HTTPServer:
    server = HTTPServer(root, port=0, **kw)
    await server.start()
    return server


async def stop(server: HTTPServer, *writers: asyncio.StreamWriter) -> None:
    """Close the clients, then the server, which must end with no connection."""
    for w in writers:
        w.close()
        await w.wait_closed()
    server.close()
    await server.wait_closed()
    assert server.connections == 0


def get(path: str, extra: str = "", method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {path} {version}\r\nHost: t\r\n{extra}\r\n".encode()


@pytest.mark.asyncio
async def test_keep_alive_serves_several_requests_on_one_connection(site):
    server = await started(site)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for path, body, ctype in (("/", b"<h1>index</h1>\n", "text/html; charset=utf-8"),
                              ("/a.txt", b"A" * 10, "text/plain; charset=utf-8"),
                              ("/sub/", b"sub index\n", "text/html; charset=utf-8"),
                              ("/sub/c.json", b'{"c": 1}', "application/json; charset=utf-8"),
                              ("/with%20space.txt", b"spaced", "text/plain; charset=utf-8")):
        writer.write(get(path))
        r = await read_response(reader)
        assert (r.status, r.body) == (200, body), path
        assert r.headers["content-type"] == ctype
        assert r.headers["content-length"] == str(len(body))
        assert email.utils.parsedate_to_datetime(r.headers["date"]) is not None
        assert "connection" not in r.headers  # HTTP/1.1: keep-alive is the default
    writer.write(get("/big.bin"))
    r = await read_response(reader)
    assert r.status == 200 and len(r.body) == BIG
    assert r.body == (site / "big.bin").read_bytes()
    writer.write(get("/big.bin", method="HEAD"))
    r = await read_response(reader, head_request=True)
    assert r.status == 200 and r.headers["content-length"] == str(BIG)
    writer.write(get("/b.txt", extra="Connection: close\r\n"))
    r = await read_response(reader)
    assert r.body == b"B" * 20 and r.headers["connection"] == "close"
    assert await reader.read() == b""  # the server closed after it
    writer.close()
    await writer.wait_closed()
    assert server.statistics()["requests"] == 8
    await stop(server)


@pytest.mark.asyncio
async def test_http_1_0_closes_unless_keep_alive_is_asked(site):
    server = await started(site)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    r = await read_response(reader)
    assert r.status == 200 and r.headers["connection"] == "keep-alive"
    writer.write(b"GET /b.txt HTTP/1.0\r\n\r\n")
    r = await read_response(reader)
    assert r.body == b"B" * 20 and r.headers["connection"] == "close"
    assert await reader.read() == b""
    await stop(server, writer)


@pytest.mark.asyncio
async def test_three_pipelined_requests_in_one_packet_are_answered_in_order(site):
    server = await started(site)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/a.txt") + get("/big.bin") + get("/b.txt"))
    bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"A" * 10, (site / "big.bin").read_bytes(), b"B" * 20]
    await stop(server, writer)


@pytest.mark.asyncio
async def test_every_error_status(site):
    server = await started(site, max_head=1024, max_body=100)
    mtime = os.stat(site / "a.txt").st_mtime
    later = email.utils.formatdate(mtime + 60, usegmt=True)
    earlier = email.utils.formatdate(mtime - 60, usegmt=True)
    cases = [
        # (raw request, status, the server closes after it)
        (get("/nope.txt"), 404, False),
        (get("/sub/nothing/"), 404, False),
        (get("/a.txt", method="DELETE"), 405, False),
        (b"POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 405, False),
        (get("/a.txt", extra=f"If-Modified-Since: {later}\r\n"), 304, False),
        (get("/a.txt", extra=f"If-Modified-Since: {earlier}\r\n"), 200, False),
        (get("/a.txt", extra="If-Modified-Since: not a date\r\n"), 200, False),
        (b"GET /a.txt HTTP/1.1\r\n\r\n", 400, True),  # HTTP/1.1 without Host
        (b"GARBAGE\r\n\r\n", 400, True),
        (b"GET /a.txt HTTP/1.1\r\nHost: t\r\nbad header line\r\n\r\n", 400, True),
        (b"GET /a.txt HTTP/3.0\r\nHost: t\r\n\r\n", 400, True),
        (b"POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n", 413, True),
        (get("/a.txt", extra="X-Big: " + "y" * 2000 + "\r\n"), 431, True),
    ]
    for raw, status, closes in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        r = await read_response(reader)
        assert r.status == status, raw[:60]
        if status == 405:
            assert r.headers["allow"] == "GET, HEAD"
        if status == 304:
            assert r.body == b"" and "last-modified" in r.headers
        if closes:
            assert r.headers["connection"] == "close"
            assert await reader.read() == b""
        else:  # the connection stays usable
            writer.write(get("/b.txt"))
            assert (await read_response(reader)).body == b"B" * 20
        writer.close()
        await writer.wait_closed()
    st = server.statistics()["statuses"]
    assert {400, 404, 405, 304, 413, 431} <= set(st)
    await stop(server)


HOSTILE = [
    "/../secret.txt", "/../../../../etc/passwd", "/sub/../../secret.txt",
    "/%2e%2e/secret.txt", "/%2E%2E/%2e%2e/etc/passwd", "/..%2fsecret.txt",
    "/sub/%2e%2e%2f%2e%2e%2fsecret.txt", "/%252e%252e/secret.txt", "/..%5csecret.txt",
    "/escape", "/escape_dir/secret.txt", "/sub/../escape", "/a.txt%00.html",
    "/%00../secret.txt", "//etc/passwd", "/./../secret.txt", "/%c0%ae%c0%ae/secret.txt",
    "http://t/../secret.txt", "../secret.txt", "/.%2e/secret.txt",
]


@pytest.mark.asyncio
async def test_hostile_paths_never_serve_a_file_outside_the_root(site):
    server = await started(site)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    statuses = {}
    for path in HOSTILE:
        writer.write(get(path))
        r = await read_response(reader)
        statuses[path] = r.status
        assert b"SECRET" not in r.body and b"root:" not in r.body, path
        assert r.status in (400, 403, 404), path
        if r.status == 400:  # the connection ends after a bad request
            writer.close()
            await writer.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert statuses["/escape"] == 403 and statuses["/../secret.txt"] == 403
    writer.write(get("/inside"))  # a symlink that stays inside is served
    assert (await read_response(reader)).body == b"A" * 10
    await stop(server, writer)


@pytest.mark.asyncio
async def test_slowloris_is_cut_at_its_deadline_while_others_are_served(site):
    server = await started(site, header_timeout=0.2, timeout=30)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
    slow_w.write(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n")  # never finishes its head
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    served = 0
    closed = asyncio.ensure_future(slow_r.read())
    while not closed.done():  # an honest client is served all along
        writer.write(get("/b.txt"))
        assert (await read_response(reader)).status == 200
        served += 1
    assert b"408" in closed.result().split(b"\r\n")[0]
    assert served > 0 and server.statistics()["timeouts"] == 1
    writer.write(get("/a.txt"))
    assert (await read_response(reader)).status == 200
    await stop(server, writer, slow_w)


async def _slow_head(server: HTTPServer, writer: asyncio.StreamWriter) -> Any:
    """Send the start of a request head that never completes; the server's
    (only) connection once it has read it."""
    writer.write(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n")
    while not server._conns or not next(iter(server._conns)).framer.buffered():
        await asyncio.sleep(0)
    (conn,) = server._conns
    return conn


def _due_at(loop: asyncio.AbstractEventLoop, when: float) -> asyncio.Future[None]:
    """A future set by a timer due at *when* (loop time)."""
    fut = loop.create_future()
    loop.call_at(when, fut.set_result, None)
    return fut


async def _cut_with_408(server: HTTPServer, reader: asyncio.StreamReader) -> None:
    """The server timed one connection out, and *reader*'s client got 408."""
    assert server.statistics()["timeouts"] == 1
    assert b"408" in (await reader.read()).split(b"\r\n")[0]


@pytest.mark.asyncio
async def test_slowloris_is_cut_when_its_deadline_fires_late(site):
    # The loop is busy past the head deadline, so the connection's timer
    # fires late: the head began in time, the firing cuts it (a late firing
    # is no sign that the head began after a long idle time).
    loop = asyncio.get_running_loop()
    server = await started(site, header_timeout=0.2, timeout=30)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        conn = await _slow_head(server, slow_w)
        deadline = conn.ready_at + 0.2
        after = _due_at(loop, deadline + 0.01)  # right after it
        time.sleep(max(0.0, deadline + 0.1 - loop.time()))  # the loop blocked past both
        await after
        await _cut_with_408(server, slow_r)
    finally:
        await stop(server, slow_w)


@pytest.mark.asyncio
async def test_a_slow_head_after_a_request_is_cut_at_its_own_deadline(site):
    # The connection's timer is armed for its first head deadline (when it
    # was accepted); the first request is answered later, and the next
    # head never completes: it is cut at header_timeout after that answer,
    # neither at the earlier deadline nor a header_timeout after it.
    loop = asyncio.get_running_loop()
    server = await started(site, header_timeout=0.5, timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        while not server._conns:  # accepted: its first deadline is set
            await asyncio.sleep(0)
        (conn,) = server._conns
        time.sleep(0.3)  # the loop busy: the answer comes 0.3 s after the accept
        writer.write(get("/a.txt"))
        assert (await read_response(reader)).status == 200
        deadline = conn.ready_at + 0.5  # the next head's
        await _slow_head(server, writer)
        before, after = _due_at(loop, deadline - 0.05), _due_at(loop, deadline + 0.05)
        await before  # the first deadline (0.2 s earlier) has fired
        assert server.statistics()["timeouts"] == 0
        await after
        await _cut_with_408(server, reader)
    finally:
        await stop(server, writer)


@pytest.mark.asyncio
async def test_idle_keep_alive_connection_is_closed_after_the_timeout(site):
    server = await started(site, header_timeout=0.05, timeout=0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/a.txt"))
    assert (await read_response(reader)).status == 200
    assert await reader.read() == b""  # closed once idle for the timeout
    assert server.connections == 0
    await stop(server, writer)


@pytest.mark.asyncio
async def test_a_client_that_stops_reading_does_not_grow_server_memory(site):
    server = await started(site, max_output=64 * 1024, sendfile_min=1 << 20)
    size = os.path.getsize(site / "big.bin")  # in memory: sendfile_min is above it
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 20)
    n = 300  # 90 MB of responses asked for in one go
    writer.write(get("/big.bin") * n)
    expected = (site / "big.bin").read_bytes()
    for _ in range(n):
        r = await read_response(reader)
        assert r.body == expected  # nothing lost or reordered
    # at most max_output plus one response waited in the server at any time
    assert server.statistics()["peak_output"] <= 64 * 1024 + size + 512
    await stop(server, writer)


@pytest.mark.asyncio
async def test_pipelined_large_files_hold_one_open_file_at_a_time(site):
    server = await started(site, max_output=64 * 1024)  # big.bin goes by sendfile
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 20)
    n = 100
    writer.write(get("/big.bin") * n)
    before = len(os.listdir("/proc/self/fd"))
    most = 0
    expected = (site / "big.bin").read_bytes()
    for _ in range(n):
        most = max(most, len(os.listdir("/proc/self/fd")) - before)
        assert (await read_response(reader)).body == expected
    assert most <= 1  # the file being sent, never one per queued request
    assert server.statistics()["peak_output"] <= 64 * 1024 + BIG + 512
    await stop(server, writer)


@pytest.mark.asyncio
async def test_graceful_shutdown_loses_no_in_flight_response(site):
    server = await started(site)
    serving = asyncio.ensure_future(server.serve_forever())
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/a.txt"))
    assert (await read_response(reader)).status == 200  # both connections accepted
    writer.write(get("/big.bin") + get("/big.bin") + get("/a.txt"))
    first = await reader.readexactly(20)  # the requests were read: answering began
    server.close()
    assert await idle_r.read() == b""  # an idle connection is closed at once
    rest = first + await reader.read()  # ... the busy one after its answers
    expected = (site / "big.bin").read_bytes()
    assert rest.count(b"HTTP/1.1 200 OK") == 3
    assert rest.count(expected) == 2 and rest.endswith(b"A" * 10)
    # responses already under way when close() came end with the stream; one
    # answered after it says so
    assert rest.count(b"Connection: close") <= 1
    await asyncio.wait_for(serving, 10)
    assert server.connections == 0
    for w in (writer, idle_w):
        w.close()
        await w.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


@pytest.mark.asyncio
async def test_route_table_decides_the_priority_of_each_request(site):
    log = []
    server = await started(site, routes={"/sub/": Priority.HIGH, "/sub/c": Priority.CRITICAL},
                           access_log=lambda *entry: log.append(entry))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    own = {"/a.txt": Priority.NORMAL, "/sub/": Priority.HIGH, "/sub/c.json": Priority.CRITICAL,
           "/b.txt": Priority.NORMAL}
    for path in own:  # one at a time: each at its own route's level
        writer.write(get(path))
        assert (await read_response(reader)).status == 200
    assert [(target, prio) for _m, target, _s, _n, prio in log] == list(own.items())
    log.clear()
    writer.write(b"".join(get(path) for path in own))  # pipelined together
    for _ in own:
        assert (await read_response(reader)).status == 200
    # the connection's order is kept; requests that arrived together are
    # answered at the highest level among them, never below their own
    assert [target for _m, target, _s, _n, _p in log] == list(own)
    assert all(prio >= own[target] for _m, target, _s, _n, prio in log)
    assert max(prio for *_rest, prio in log) == Priority.CRITICAL
    await stop(server, writer)


@pytest.mark.asyncio
async def test_bad_options_are_named(site, tmp_path):
    with pytest.raises(NotADirectoryError, match="not a directory"):
        HTTPServer(tmp_path / "missing")
    with pytest.raises(ValueError, match="timeout"):
        HTTPServer(site, timeout=0)
    with pytest.raises(ValueError, match="route"):
        HTTPServer(site, routes={"health": 50})
    with pytest.raises(ValueError, match="priority"):
        HTTPServer(site, routes={"/health": 500})
    with pytest.raises(ValueError, match="max_head"):
        HTTPServer(site, max_head=-1)


@pytest.mark.backends("selector")
@pytest.mark.asyncio
async def test_refuses_a_stock_loop_with_a_clear_error(site):
    server = HTTPServer(site, port=0)
    done = asyncio.get_running_loop().create_future()

    def on_stock() -> None:
        async def go() -> None:
            await server.start()
        try:
            asyncio.run(go())
        except RuntimeError as exc:
            done.get_loop().call_soon_threadsafe(done.set_result, str(exc))

    import threading
    t = threading.Thread(target=on_stock)
    t.start()
    msg = await done
    t.join()
    assert "aem loop" in msg


@contextlib.contextmanager
def _httpd(site, backend: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """``aem-loop httpd SITE`` in a process of its own, listening."""
    port = free_port()
    with running([sys.executable, "-m", "aem_loop.cli", "httpd", str(site), "--port", str(port),
                  "--backend", backend]) as proc:
        assert "serving" in proc.stdout.readline()  # listening from here on
        yield proc, port


def _read_response(f) -> tuple[int, bytes]:
    status = int(f.readline().split()[1])
    length = 0
    while (h := f.readline()) != b"\r\n":
        if h.lower().startswith(b"content-length:"):
            length = int(h.split(b":")[1])
    return status, f.read(length)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_cli_serves_a_directory_as_a_newcomer_tries_it(site, backend):
    """aem-loop httpd DIR: a file, a missing file, '..'; SIGINT stops it cleanly."""
    with _httpd(site, backend) as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as c, c.makefile("rb") as f:
            for path, status in (("/a.txt", 200), ("/missing", 404), ("/../secret.txt", 403)):
                c.sendall(get(path))
                got, body = _read_response(f)
                assert got == status, path
                assert b"SECRET" not in body
        assert "stopped: 3 requests" in ends_cleanly(proc)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_sigterm_finishes_the_responses_in_flight(site, backend):
    with _httpd(site, backend) as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as c, c.makefile("rb") as f:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            c.sendall(get("/big.bin") * 3)
            first = f.read(64)  # answering has begun; most of it is still to send
            proc.send_signal(signal.SIGTERM)
            rest = first + f.read()  # until the server closes the connection
        expected = (site / "big.bin").read_bytes()
        assert rest.count(b"HTTP/1.1 200 OK") == 3 and rest.count(expected) == 3
        assert "stopped: 3 requests" in ends_cleanly(proc, None)  # it exits by itself
