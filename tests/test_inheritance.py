"""Priority travels: tasks, timers, readers, servers and accepted connections,
wakeups by urgent events (inheritance), and lock boosting."""

import asyncio
import socket
import time

import pytest

import aem_loop
from aem_loop import Priority


@pytest.mark.asyncio
async def test_task_created_inside_priority_block_inherits():
    async def f():
        await asyncio.sleep(0)
        return aem_loop.current_priority(), aem_loop.effective_priority()

    with aem_loop.priority(Priority.LOW):
        t = asyncio.create_task(f())
    assert await t == (25, 25)


@pytest.mark.asyncio
async def test_server_connections_inherit_priority():
    seen = []
    done = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        seen.append(("handler", aem_loop.current_priority()))
        data = await reader.readexactly(3)
        seen.append(("after-read", aem_loop.effective_priority()))
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set_result(None)

    with aem_loop.priority(Priority.HIGH):
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"abc")
    assert await r.readexactly(3) == b"abc"
    await done
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()
    assert seen == [("handler", 75), ("after-read", 75)]


class _Proto(asyncio.Protocol):
    def __init__(self, log, done):
        self.log, self.done = log, done

    def connection_made(self, transport):
        self.log.append(("made", aem_loop.effective_priority()))

    def data_received(self, data):
        self.log.append(("data", aem_loop.effective_priority(), data))

    def connection_lost(self, exc):
        self.log.append(("lost", aem_loop.effective_priority()))
        self.done.set_result(None)


@pytest.mark.asyncio
async def test_protocol_callbacks_run_at_server_priority():
    loop = asyncio.get_running_loop()
    log: list = []
    done = loop.create_future()
    with aem_loop.priority(90):
        server = await loop.create_server(lambda: _Proto(log, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"xyz")
    await done
    server.close()
    await server.wait_closed()
    data = b"".join(e[2] for e in log if e[0] == "data")
    assert data == b"xyz"
    assert {e[1] for e in log} == {90}
    assert log[0][0] == "made" and log[-1][0] == "lost"


@pytest.mark.asyncio
async def test_reader_runs_at_its_priority():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    got = loop.create_future()
    try:
        with aem_loop.priority(60):
            loop.add_reader(a, lambda: got.set_result(aem_loop.effective_priority()))
        b.send(b"x")
        assert await got == 60
    finally:
        loop.remove_reader(a)
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_task_woken_by_urgent_timer_runs_that_step_at_its_priority():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    steps = []
    started = asyncio.Event()

    async def low():
        steps.append(aem_loop.effective_priority())
        started.set()
        await fut
        steps.append(aem_loop.effective_priority())  # woken by the urgent timer
        await asyncio.sleep(0)
        steps.append(aem_loop.effective_priority())  # its own level again

    t = loop.create_task(low(), priority=Priority.LOW)
    await started.wait()
    with aem_loop.priority(Priority.CRITICAL):
        loop.call_later(0.001, fut.set_result, None)
    await t
    assert steps == [25, 99, 25]
    assert loop.statistics().inherited >= 1


@pytest.mark.asyncio
async def test_no_inheritance_when_disabled():
    loop = asyncio.get_running_loop()
    loop._aem.inherit = False  # the loop option inherit=False sets this
    fut = loop.create_future()

    async def low():
        await fut
        return aem_loop.effective_priority()

    t = loop.create_task(low(), priority=Priority.LOW)
    await asyncio.sleep(0)
    with aem_loop.priority(Priority.CRITICAL):
        loop.call_soon(fut.set_result, None)
    assert await t == 25


def _c_task(loop, coro, **kw):
    return asyncio.Task(coro, loop=loop, **kw)


def _py_task(loop, coro, **kw):
    return asyncio.tasks._PyTask(coro, loop=loop, **kw)


@pytest.mark.asyncio
@pytest.mark.parametrize("factory", [None, _c_task, _py_task])
async def test_new_task_first_step_does_not_inherit_creator(factory):
    """With or without a task factory (create_task flags the first step
    only for a factory's tasks)."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(factory)
    try:
        await _first_step_order(loop)
    finally:
        loop.set_task_factory(None)


async def _first_step_order(loop):
    order = []
    ev = asyncio.Event()

    async def low():
        order.append("low")
        ev.set()

    with aem_loop.priority(Priority.HIGH):
        # a HIGH step creates a LOW task and then a NORMAL callback:
        # the LOW task's first step must not run before the NORMAL one
        async def creator():
            loop.create_task(low(), priority=Priority.LOW)
            with aem_loop.priority(Priority.NORMAL):
                loop.call_soon(order.append, "normal")

        await loop.create_task(creator())
    await ev.wait()
    assert order == ["normal", "low"]


@pytest.mark.asyncio
async def test_lock_boosts_holder_to_most_urgent_waiter():
    loop = asyncio.get_running_loop()
    lock = aem_loop.Lock()
    holder_levels = []
    waiter_in = asyncio.Event()
    holding = asyncio.Event()

    async def holder():
        async with lock:
            holding.set()
            holder_levels.append(aem_loop.effective_priority())
            await waiter_in.wait()
            await asyncio.sleep(0)
            holder_levels.append(aem_loop.effective_priority())
        await asyncio.sleep(0)
        holder_levels.append(aem_loop.effective_priority())

    async def urgent():
        waiter_in.set()
        async with lock:
            return aem_loop.effective_priority()

    h = loop.create_task(holder(), priority=Priority.LOW)
    await holding.wait()
    u = loop.create_task(urgent(), priority=Priority.CRITICAL)
    assert await u == 99
    await h
    # LOW while alone, CRITICAL while the urgent task waited, LOW after release
    assert holder_levels == [25, 99, 25]
    assert not loop._aem.boosts


@pytest.mark.asyncio
async def test_lock_boost_prevents_inversion_by_medium_flood():
    """LOW holds the lock, CRITICAL waits, MEDIUM floods: the holder must
    finish before the flood does."""
    loop = asyncio.get_running_loop()
    lock = aem_loop.Lock()
    log = []
    flood_left = [2000]
    released = asyncio.Event()

    def medium():
        if flood_left[0] and not released.is_set():
            flood_left[0] -= 1
            loop.call_soon(medium)

    holding = asyncio.Event()

    async def holder():
        async with lock:
            holding.set()
            for _ in range(20):
                await asyncio.sleep(0)
        log.append(("released", flood_left[0]))
        released.set()

    async def urgent():
        async with lock:
            log.append("urgent")

    h = loop.create_task(holder(), priority=Priority.LOW)
    await holding.wait()
    u = loop.create_task(urgent(), priority=Priority.CRITICAL)
    await asyncio.sleep(0)  # the urgent task blocks on the lock
    with aem_loop.priority(Priority.HIGH):
        loop.call_soon(medium)
    await asyncio.gather(h, u)
    assert log[0][0] == "released" and log[0][1] > 0  # before the flood ended
    assert log[1] == "urgent"


@pytest.mark.asyncio
async def test_boosted_holder_woken_at_its_own_level_runs_at_the_boost():
    """LOW holds the lock and waits for an event, CRITICAL waits for the
    lock, HIGH floods.  A LOW callback (let through by aging) sets the
    event: the holder's wakeup is queued from its own level, so only the
    boost lifts it above the flood; it runs before any more of the flood."""
    loop = asyncio.get_running_loop()
    lock = aem_loop.Lock()
    go = asyncio.Event()
    log: list[str] = []
    released = asyncio.Event()
    flood_left = [1_000_000]

    def medium():
        log.append("flood")
        if flood_left[0] and not released.is_set():
            flood_left[0] -= 1
            loop.call_soon(medium)

    def set_go():
        log.append("go")
        go.set()

    holding = asyncio.Event()

    async def holder():
        async with lock:
            holding.set()
            await go.wait()
            log.append("holder")
        released.set()

    async def urgent():
        async with lock:
            pass

    h = loop.create_task(holder(), priority=Priority.LOW)
    await holding.wait()
    u = loop.create_task(urgent(), priority=Priority.CRITICAL)
    await asyncio.sleep(0)  # the urgent task blocks on the lock: the holder is boosted
    with aem_loop.priority(Priority.HIGH):
        loop.call_soon(medium)
    with aem_loop.priority(Priority.LOW):
        loop.call_soon(set_go)
    await asyncio.gather(h, u)
    assert flood_left[0] > 0, "the flood ended first"
    i = log.index("go")
    assert log[i + 1] == "holder", log[i - 2:i + 5]


@pytest.mark.asyncio
async def test_cancelled_waiter_drops_its_boost():
    loop = asyncio.get_running_loop()
    lock = aem_loop.Lock()
    await lock.acquire()
    me = asyncio.current_task()
    w = loop.create_task(lock.acquire(), priority=90)
    await asyncio.sleep(0)
    assert loop._aem.boosts.get(me) == 90
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    assert me not in loop._aem.boosts
    lock.release()


@pytest.mark.asyncio
async def test_urgent_io_is_noticed_behind_a_backlog():
    """A backlog of slow low callbacks is queued; urgent readiness that is
    already there runs after a slice, not after the whole backlog."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    order = []
    done = loop.create_future()

    def slow(i):
        end = time.perf_counter() + 0.0005  # longer than the default slice
        while time.perf_counter() < end:
            pass
        order.append(i)
        if i == 99:
            done.set_result(None)

    def urgent():
        loop.remove_reader(a)
        a.recv(1)
        order.append("urgent")

    try:
        with aem_loop.priority(Priority.CRITICAL):
            loop.add_reader(a, urgent)
        with aem_loop.priority(Priority.IDLE):
            for i in range(100):
                loop.call_soon(slow, i)
        b.send(b"!")
        await done
        assert order.index("urgent") < 10
        assert [o for o in order if o != "urgent"] == list(range(100))
        assert loop.statistics().slices >= 1
    finally:
        loop.remove_reader(a)
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_readiness_of_a_queued_reader_coalesces():
    """Polls between slices see a level-triggered fd ready again while its
    handler still waits in the queue: it must run once, not once per poll."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    u1, u2 = socket.socketpair()
    a.setblocking(False)
    calls = []
    done = loop.create_future()

    def reader():
        try:
            calls.append(a.recv(100))
        except BlockingIOError:  # a duplicate activation finds nothing to read
            calls.append(None)
        # FIFO within IDLE: a duplicate queued while this handle waited
        # would run before this callback does.
        loop.call_soon(lambda: done.done() or done.set_result(None))

    def slow(i):
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass

    try:
        with aem_loop.priority(Priority.CRITICAL):  # forces a poll at each slice
            loop.add_reader(u1, lambda: None)
        with aem_loop.priority(Priority.IDLE):
            loop.call_soon(slow, -1)
            loop.add_reader(a, reader)
            b.send(b"data")
            for i in range(20):
                loop.call_soon(slow, i)
        await done
        assert calls == [b"data"]
        assert loop.statistics().slices >= 5
    finally:
        loop.remove_reader(u1)
        loop.remove_reader(a)
        for s in (a, b, u1, u2):
            s.close()
