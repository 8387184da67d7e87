"""loop.add_event: sources, jobs, merging, priorities, flags -- real sockets and processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aem_loop
from aem_loop import EventFlags, Priority, framers


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


async def _until_eof(ev: aem_loop.Event, acts: list) -> None:
    await ev.wait_unregistered()
    assert acts and acts[-1].eof


@pytest.mark.asyncio
async def test_socket_data_lines_in_order_with_eof():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    acts: list = []
    ev = loop.add_event(aem_loop.SocketData(a, framers.Lines()), acts.append)
    assert loop.events() == [ev]
    b.sendall(b"one\ntwo\nthr")
    b.sendall(b"ee\nfour")
    b.shutdown(socket.SHUT_WR)
    await _until_eof(ev, acts)
    assert [m for act in acts for m in act.data] == [b"one", b"two", b"three", b"four"]
    assert not ev.registered and loop.events() == []
    st = ev.statistics()
    assert st.activations == len(acts) and st.occurrences >= st.activations
    a.close()
    b.close()


@pytest.mark.asyncio
async def test_one_source_two_priorities_both_get_all_data():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    src = aem_loop.SocketData(a, framers.LengthPrefixed(2))
    seen: dict[int, list] = {Priority.LOW: [], Priority.HIGH: []}
    order: list[int] = []

    def handler(act):
        order.append(aem_loop.current_priority())
        seen[aem_loop.current_priority()].extend(act.data)

    low = loop.add_event(src, handler, priority=Priority.LOW)
    high = loop.add_event(src, handler, priority=Priority.HIGH)
    msgs = [os.urandom(n) for n in (0, 1, 100, 5000, 3)]
    b.sendall(b"".join(len(m).to_bytes(2, "big") + m for m in msgs))
    b.close()
    await low.wait_unregistered()
    await high.wait_unregistered()
    assert seen[Priority.LOW] == msgs and seen[Priority.HIGH] == msgs
    assert order[0] == Priority.HIGH  # the same occurrence: the urgent registration first
    a.close()


@pytest.mark.asyncio
async def test_user_event_merges_occurrences_into_one_activation():
    loop = asyncio.get_running_loop()
    acts: list = []
    ev = loop.add_event(aem_loop.UserEvent(), acts.append)
    for i in range(5):
        ev.trigger(i)
    await ev.wait_idle()
    assert len(acts) == 1
    assert acts[0].data == [0, 1, 2, 3, 4] and acts[0].occurrences == 5 and acts[0].merged == 4
    assert ev.statistics().merged == 4
    ev.unregister()


@pytest.mark.asyncio
async def test_user_events_from_8_threads_none_lost():
    loop = asyncio.get_running_loop()
    got: list = []
    ev = loop.add_event(aem_loop.UserEvent(), lambda act: got.extend(act.data))
    n = 2000

    def worker(t):
        for i in range(n):
            ev.trigger((t, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    await ev.wait_idle()
    assert len(got) == 8 * n
    for t in range(8):
        assert [i for (tt, i) in got if tt == t] == list(range(n))  # each thread's order kept
    ev.unregister()


@pytest.mark.asyncio
async def test_oversize_message_is_an_error_to_the_handler_and_ends_the_event():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    acts: list = []
    ev = loop.add_event(aem_loop.SocketData(a, framers.Lines(max_len=100)), acts.append)
    b.sendall(b"ok\n" + b"x" * 1000 + b"\n")
    await _until_eof(ev, acts)
    assert acts[-1].data == [] or acts[0].data == [b"ok"]
    assert isinstance(acts[-1].error, framers.FrameTooLarge)
    assert [m for act in acts for m in act.data] == [b"ok"]
    assert not ev.registered
    a.close()
    b.close()


@pytest.mark.asyncio
async def test_incomplete_message_at_eof_is_reported():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    acts: list = []
    ev = loop.add_event(aem_loop.SocketData(a, framers.LengthPrefixed(4)), acts.append)
    b.sendall(b"\x00\x00\x00\x09abc")
    b.close()
    await _until_eof(ev, acts)
    assert isinstance(acts[-1].error, framers.IncompleteMessage)
    assert acts[-1].error.partial == b"\x00\x00\x00\x09abc"
    a.close()


@pytest.mark.asyncio
async def test_sender_outrunning_the_handler_is_paused_memory_bounded_nothing_lost():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    high_water = 64 * 1024
    got = bytearray()
    biggest = 0

    def handler(act):
        nonlocal biggest
        size = sum(len(m) for m in act.data)
        biggest = max(biggest, size)
        for m in act.data:
            got.extend(m)

    ev = loop.add_event(aem_loop.SocketData(a, high_water=high_water), handler,
                        priority=Priority.LOW)
    total = 8 * 1024 * 1024
    payload = os.urandom(total)
    sender = threading.Thread(target=b.sendall, args=(payload,))
    sender.start()

    async def busy():  # urgent work keeps the LOW handler from running
        while not ev.statistics().paused:
            await asyncio.sleep(0)

    await aem_loop.create_task(busy(), priority=Priority.HIGH)
    await asyncio.to_thread(sender.join)
    b.shutdown(socket.SHUT_WR)
    await ev.wait_unregistered()
    assert bytes(got) == payload
    assert ev.statistics().paused >= 1
    # never more pending for the handler than the mark plus one read
    assert biggest <= high_water + aem_loop.events.sources.READ_SIZE
    a.close()
    b.close()


@pytest.mark.asyncio
async def test_classifier_decides_the_activation_priority_from_the_data():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    acts = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def classify(line):
        if line == b"boom":
            raise RuntimeError("classifier failed")
        if line == b"bad":
            return 500
        return Priority.HIGH if line.startswith(b"!") else None

    def handler(act):
        acts.append((list(act.data), act.priority, aem_loop.current_priority(), act.occurrences))

    ev = loop.add_event(aem_loop.SocketData(a, framers.Lines(), classify=classify), handler,
                        priority=Priority.LOW)
    sent = 0

    async def busy():  # NORMAL work keeps the LOW activation pending
        nonlocal sent
        while not acts:
            if sent == 0:
                b.sendall(b"x\n")
                sent = 1
            elif sent == 1 and ev.statistics().occurrences == 1:
                b.sendall(b"!y\n")  # merges into the pending activation and raises it
                sent = 2
            await asyncio.sleep(0)

    await aem_loop.create_task(busy(), priority=Priority.NORMAL)
    assert acts == [([b"x", b"!y"], Priority.HIGH, Priority.HIGH, 2)]
    b.sendall(b"boom\nbad\nz\n")
    b.shutdown(socket.SHUT_WR)
    await ev.wait_unregistered()
    assert [d for a_ in acts[1:] for d in a_[0]] == [b"boom", b"bad", b"z"]
    assert all(prio == Priority.LOW for _d, prio, _c, _n in acts[1:])
    assert [type(c["exception"]) for c in errors] == [RuntimeError, ValueError]
    assert all("classifier" in c["message"] for c in errors)
    with pytest.raises(TypeError, match="classify"):
        aem_loop.SocketData(a, classify=42)
    a.close()
    b.close()


@pytest.mark.asyncio
async def test_pause_stops_reading_until_resume_nothing_lost():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    c, d = _pair()
    got = []
    ev = loop.add_event(aem_loop.SocketData(a, framers.Lines()), lambda act: got.extend(act.data))
    other = loop.add_event(aem_loop.SocketData(c, framers.Lines()), lambda act: None)
    ev.pause()
    ev.pause()  # idempotent
    b.sendall(b"one\ntwo\n")
    d.sendall(b"ping\n")
    await asyncio.sleep(0)
    while other.statistics().activations == 0:  # the loop polled with both ready
        await asyncio.sleep(0)
    assert got == [] and a.recv(64, socket.MSG_PEEK) == b"one\ntwo\n"
    ev.resume()
    b.shutdown(socket.SHUT_WR)
    await ev.wait_unregistered()
    assert got == [b"one", b"two"]
    with pytest.raises(TypeError, match="paused"):
        loop.add_event(aem_loop.UserEvent(), lambda act: None).pause()
    other.unregister()
    for s in (a, b, c, d):
        s.close()


@pytest.mark.asyncio
async def test_oneshot_unregisters_after_one_activation():
    loop = asyncio.get_running_loop()
    acts: list = []
    src = aem_loop.UserEvent()
    ev = loop.add_event(src, acts.append, flags=EventFlags.ONESHOT)
    ev.trigger("a")
    await ev.wait_idle()
    assert [x.data for x in acts] == [["a"]] and not ev.registered
    with pytest.raises(RuntimeError, match="no event is registered"):
        src.trigger("b")


@pytest.mark.asyncio
async def test_constructor_and_destructor_around_the_handler_also_when_it_raises():
    loop = asyncio.get_running_loop()
    table = aem_loop.VMTable(1 << 16)
    errors: list = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    seen: list = []

    def handler(act):
        act.resource.view[:2] = b"hi"
        seen.append(bytes(act.resource.view[:2]))
        if act.data == ["boom"]:
            raise ValueError("boom")

    ev = loop.add_event(aem_loop.UserEvent(), handler,
                        constructor=lambda: table.alloc(1024),
                        destructor=lambda block: block.release())
    ev.trigger("ok")
    await ev.wait_idle()
    ev.trigger("boom")
    await ev.wait_idle()
    assert seen == [b"hi", b"hi"]
    st = table.statistics()
    assert st.bytes_in_use == 0 and st.allocs == st.releases == 2  # both released
    assert len(errors) == 1 and isinstance(errors[0]["exception"], ValueError)
    assert errors[0]["event"] is ev and ev.statistics().errors == 1
    ev.unregister()
    table.close()


@pytest.mark.asyncio
async def test_async_handler_runs_as_a_task_at_the_events_priority():
    loop = asyncio.get_running_loop()
    got: list = []

    async def handler(act):
        await asyncio.sleep(0)
        got.append((act.data, aem_loop.current_priority()))

    ev = loop.add_event(aem_loop.UserEvent(), handler, priority=Priority.HIGH)
    ev.trigger(1)
    await ev.wait_idle()
    assert got == [([1], Priority.HIGH)]
    ev.unregister()


@pytest.mark.asyncio
async def test_children_parent_and_the_loops_list():
    loop = asyncio.get_running_loop()
    children: list = []

    def parent_handler(act):
        children.append(loop.add_event(aem_loop.UserEvent(), lambda a: None))

    parent = loop.add_event(aem_loop.UserEvent(), parent_handler)
    parent.trigger()
    await parent.wait_idle()
    (child,) = children
    assert child.parent is parent and parent.children == [child]
    assert aem_loop.current_event() is None
    assert loop.events() == [parent, child]
    parent.unregister()
    child.unregister()
    assert loop.events() == []


@pytest.mark.asyncio
async def test_readable_and_writable():
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(r, False)
    got: list = []
    done = loop.create_future()

    def on_readable(act):
        got.append(os.read(act.data[0], 100))
        if b"".join(got).endswith(b"!") and not done.done():
            done.set_result(None)

    ev = loop.add_event(aem_loop.Readable(r), on_readable)
    wrote = loop.create_future()
    wev = loop.add_event(aem_loop.Writable(w), lambda act: (os.write(w, b"hello!"),
                                                             wrote.set_result(act.data)),
                         flags=EventFlags.ONESHOT)
    assert await wrote == [w]
    await done
    assert b"".join(got) == b"hello!"
    assert not wev.registered
    ev.unregister()
    os.close(r)
    os.close(w)


@pytest.mark.asyncio
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals need the main thread")
async def test_signal_event():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    ev = loop.add_event(aem_loop.Signal(signal.SIGUSR1), lambda act: got.set_result(act.data))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert (await got)[0] == signal.SIGUSR1
    ev.unregister()


@pytest.mark.asyncio
async def test_child_exit_event_reaps_and_reports_the_code():
    loop = asyncio.get_running_loop()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "raise SystemExit(3)"],
                         os.environ)
    acts: list = []
    ev = loop.add_event(aem_loop.ChildExit(pid), acts.append)
    await ev.wait_unregistered()
    assert acts[-1].data == [aem_loop.ChildStatus(pid, 3)] and acts[-1].eof
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    with pytest.raises(ProcessLookupError, match="no process"):
        loop.add_event(aem_loop.ChildExit(pid), acts.append)


def _record(path, act):  # runs in the child (module level: picklable)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {act.data!r}\n")
    return len(act.data)


@pytest.mark.asyncio
async def test_fork_handler_runs_in_a_child(tmp_path):
    import functools

    loop = asyncio.get_running_loop()
    out = tmp_path / "out"
    ev = loop.add_event(aem_loop.UserEvent(), functools.partial(_record, str(out)),
                        flags=EventFlags.FORK)
    ev.trigger("x")
    await ev.wait_idle()
    pid, data = out.read_text().split(" ", 1)
    assert int(pid) != os.getpid() and data.strip() == "['x']"
    assert [p.pid for p in ev.processes] == [int(pid)]
    ev.unregister()


@pytest.mark.asyncio
async def test_capsule_handler_runs_in_a_capsule(tmp_path):
    import functools

    loop = asyncio.get_running_loop()
    out = tmp_path / "out"
    pool = aem_loop.CapsulePool(1)
    try:
        ev = loop.add_event(aem_loop.UserEvent(), functools.partial(_record, str(out)),
                            flags=EventFlags.CAPSULE, pool=pool)
        ev.trigger("y")
        await ev.wait_idle()
        pid, data = out.read_text().split(" ", 1)
        assert int(pid) in pool.pids() and data.strip() == "['y']"
        ev.unregister()
    finally:
        pool.shutdown(wait=True)


@pytest.mark.asyncio
async def test_periodic_event_ticks():
    loop = asyncio.get_running_loop()
    count = 0
    done = loop.create_future()

    def tick(act):
        nonlocal count
        count += act.occurrences
        if count >= 3 and not done.done():
            done.set_result(None)

    ev = loop.add_event(aem_loop.Periodic(0.001), tick)
    await done
    ev.unregister()
    assert ev.statistics().occurrences >= 3


@pytest.mark.asyncio
async def test_unregister_on_loop_close_leaves_no_reader():
    # (the no_leaks fixture checks fds; here the loop's own list)
    loop = asyncio.get_running_loop()
    a, b = _pair()
    ev = loop.add_event(aem_loop.SocketData(a), lambda act: None)
    ev.unregister()
    ev.unregister()  # idempotent
    assert not loop._aem_jobs
    a.close()
    b.close()


@pytest.mark.asyncio
async def test_bad_input_is_named():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with pytest.raises(TypeError, match="event source"):
        loop.add_event(object(), print)
    with pytest.raises(TypeError, match="handler must be callable"):
        loop.add_event(aem_loop.UserEvent(), "print")
    with pytest.raises(ValueError, match="priority must be in"):
        loop.add_event(aem_loop.UserEvent(), print, priority=100)
    with pytest.raises(TypeError, match="flags"):
        loop.add_event(aem_loop.UserEvent(), print, flags=2)
    with pytest.raises(ValueError, match="non-blocking"):
        aem_loop.SocketData(a)
    with pytest.raises(TypeError, match=r"feed\(\)"):
        a.setblocking(False)
        aem_loop.SocketData(a, framer=object())
    with pytest.raises(ValueError, match="exactly one of"):
        loop.add_event(aem_loop.UserEvent(), print, flags=EventFlags.NOCLDWAIT)
    ev = loop.add_event(aem_loop.Readable(a), print)
    with pytest.raises(ValueError, match="already watched by a Readable"):
        loop.add_event(aem_loop.SocketData(a), print)
    ev.unregister()
    with pytest.raises(ValueError, match="cannot be caught"):
        aem_loop.Signal(signal.SIGKILL)
    with pytest.raises(TypeError, match="only a UserEvent"):
        loop.add_event(aem_loop.Periodic(1), print).trigger()
    for e in loop.events():
        e.unregister()
    a.close()
    b.close()


# -- any chunking, then a close or a reset: no byte of a complete message lost or duplicated


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        client = socket.create_connection(ls.getsockname())
        server, _ = ls.accept()
    server.setblocking(False)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, client


def _run_stream(backend: str, msgs: list[bytes], cuts: list[int], end: str) -> list:
    data = b"".join(len(m).to_bytes(4, "big") + m for m in msgs)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[prev:p])
        prev = p

    async def main() -> list:
        loop = asyncio.get_running_loop()
        server, client = _tcp_pair()
        acts: list = []
        ev = loop.add_event(aem_loop.SocketData(server, framers.LengthPrefixed(4)), acts.append)
        for c in chunks:
            if c:
                client.sendall(c)
                await asyncio.sleep(0)  # let the job read between some chunks
        if end == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        client.close()
        await ev.wait_unregistered()
        server.close()
        return acts

    return aem_loop.run(main(), backend=backend)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12),
       st.lists(st.integers(min_value=0, max_value=40_000), max_size=8),
       st.sampled_from(["close", "reset"]))
def test_random_chunking_close_or_reset_loses_or_duplicates_no_message(backend, msgs, cuts, end):
    acts = _run_stream(backend, msgs, cuts, end)
    got = [m for act in acts for m in act.data]
    assert acts[-1].eof
    assert got == msgs[: len(got)]  # a prefix: nothing duplicated, reordered or corrupted
    if end == "close":
        assert got == msgs and acts[-1].error is None


@pytest.mark.asyncio
@pytest.mark.backends("selector")
async def test_an_activation_waits_behind_work_queued_at_its_level_before_its_data():
    """The job reads out of turn (at job level), but the activation it makes
    takes its turn: behind a callback queued at the event's level before the
    data was found, as a stock loop runs a reader after what was queued
    before the poll; and ahead of work queued below its level.  (On the
    uvloop backend, callbacks handed to uvloop's own queue keep the order
    the hand-off gives them.)"""
    loop = asyncio.get_running_loop()
    a, b = _pair()
    order: list[str] = []
    done = loop.create_future()

    def handler(act: aem_loop.Activation) -> None:
        order.append("activation")
        done.set_result(None)

    ev = loop.add_event(aem_loop.SocketData(a, framers.Lines()), handler)
    with aem_loop.priority(Priority.HIGH):  # leveled dispatch from here on
        await asyncio.sleep(0)
    b.sendall(b"line\n")
    loop.call_soon(order.append, "queued")
    await done
    assert order == ["queued", "activation"]
    order.clear()
    done = loop.create_future()
    low = loop.create_future()
    b.sendall(b"line\n")
    with aem_loop.priority(Priority.LOW):
        loop.call_soon(lambda: (order.append("low"), low.set_result(None)))
    await asyncio.gather(done, low)
    assert order == ["activation", "low"]
    ev.unregister()
    a.close()
    b.close()
