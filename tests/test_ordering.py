"""Dispatch order: highest priority first, FIFO within a level, stock order when equal."""

import asyncio
import random
import socket
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aem_loop
from aem_loop.backends.uvhandoff import HANDOFF_MAX
from conftest import data_received_once, enter_priority_mode, urgent_connects_in_a_backlog


@pytest.mark.asyncio
async def test_highest_first_fifo_within_level():
    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    rng = random.Random(7)
    order = []
    items = [(rng.choice([0, 10, 50, 51, 75, 99]), i) for i in range(300)]
    done = loop.create_future()
    for p, i in items:
        with aem_loop.priority(p):
            loop.call_soon(order.append, (p, i))
    with aem_loop.priority(0):
        loop.call_soon(lambda: done.set_result(None))
    await done
    # all were queued before any ran, so the order is a stable sort
    assert order == sorted(items, key=lambda t: -t[0])


@pytest.mark.asyncio
async def test_higher_priority_scheduled_later_runs_earlier():
    loop = asyncio.get_running_loop()
    order = []
    ev = asyncio.Event()

    def low(n):
        order.append(("low", n))
        if n == 0:
            with aem_loop.priority(99):
                loop.call_soon(order.append, ("urgent", 0))
        if n == 4:
            ev.set()

    with aem_loop.priority(10):
        for n in range(5):
            loop.call_soon(low, n)
    await ev.wait()
    # asyncio's rule holds: what a callback schedules waits for the next
    # round, but then it goes before the older low-priority backlog.
    assert order.index(("urgent", 0)) < len(order) - 1
    assert [o for o in order if o[0] == "low"] == [("low", n) for n in range(5)]


async def _trace_program() -> list:
    """A mix of callbacks, tasks, futures, timers and I/O; returns its trace."""
    loop = asyncio.get_running_loop()
    trace = []
    fut = loop.create_future()
    q: asyncio.Queue[int] = asyncio.Queue()

    async def producer():
        for i in range(5):
            trace.append(("put", i))
            await q.put(i)
            await asyncio.sleep(0)
        fut.set_result("done")

    async def consumer(name):
        while True:
            i = await q.get()
            trace.append((name, i))
            q.task_done()

    def cb(x):
        trace.append(("cb", x))
        if x < 3:
            loop.call_soon(cb, x + 10)

    cons = [asyncio.create_task(consumer(f"c{j}")) for j in range(2)]
    for x in range(3):
        loop.call_soon(cb, x)
    prod = asyncio.create_task(producer())
    r, w = await asyncio.open_connection(*(await _echo_server()))
    w.write(b"ping")
    trace.append(("io", await r.readexactly(4)))
    w.close()
    await w.wait_closed()
    trace.append(("fut", await fut))
    await prod
    await q.join()
    for c in cons:
        c.cancel()
    await asyncio.gather(*cons, return_exceptions=True)
    _SERVERS.pop().close()
    return trace


_SERVERS: list = []


async def _echo_server():
    async def handle(r, w):
        w.write(await r.read(4))
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    _SERVERS.append(srv)
    return srv.sockets[0].getsockname()[:2]


@pytest.mark.asyncio
async def test_urgent_work_from_another_thread_cuts_a_round_at_one_level():
    """A round of five callbacks, all at one level above the default: the
    first has another thread queue a more urgent callback (and waits for
    it to be queued); that one runs next, before the other four."""
    import threading

    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    order = []
    done = loop.create_future()

    def queue_urgent():
        with aem_loop.priority(99):
            loop.call_soon_threadsafe(order.append, "urgent")

    def high(n):
        order.append(n)
        if n == 0:
            t = threading.Thread(target=queue_urgent)
            t.start()
            t.join()
        if n == 4:
            done.set_result(None)

    with aem_loop.priority(75):
        for n in range(5):
            loop.call_soon(high, n)
    await done
    assert order == [0, "urgent", 1, 2, 3, 4]


@pytest.mark.parametrize("fast_path", [True, False])
def test_equal_priorities_behave_exactly_like_stock(fast_path):
    """On the fast path and on leveled dispatch (fast_path=False) alike."""
    reference = asyncio.run(_trace_program())
    for backend in ("selector", "uvloop"):
        got = aem_loop.run(_trace_program(), backend=backend, fast_path=fast_path)
        assert got == reference, backend


@pytest.mark.asyncio
async def test_cancelled_handle_does_not_run():
    loop = asyncio.get_running_loop()
    ran = []
    h = loop.call_soon(ran.append, 1)
    with aem_loop.priority(99):
        h2 = loop.call_soon(ran.append, 2)
    h.cancel()
    h2.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ran == []


@pytest.mark.asyncio
async def test_timers_run_at_their_priority_in_deadline_order():
    loop = asyncio.get_running_loop()
    order = []
    done = loop.create_future()
    when = loop.time() + 0.01
    for i, p in enumerate([10, 90, 10, 90]):
        with aem_loop.priority(p):
            loop.call_at(when, order.append, (p, i))
    loop.call_at(when + 0.01, done.set_result, None)
    await done
    assert order == [(90, 1), (90, 3), (10, 0), (10, 2)]


@pytest.mark.asyncio
async def test_threadsafe_carries_caller_priority():
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    def from_thread():
        with aem_loop.priority(88):
            loop.call_soon_threadsafe(
                lambda: got.set_result(aem_loop.effective_priority())
            )

    await loop.run_in_executor(None, from_thread)
    assert await got == 88


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_fast_path_until_first_priority(backend, fast_path):
    """Default-only work takes the backend's fast path (uvloop: uvloop's own
    queue; selector: the core's one-level dispatch); the first non-default
    priority switches to leveled dispatch, with strict order after."""
    loop = aem_loop.new_event_loop(backend=backend, fast_path=fast_path)
    order = []

    async def main():
        for i in range(3):
            loop.call_soon(order.append, ("default", i))
        await asyncio.sleep(0)
        fast = loop.statistics().fast_path
        with aem_loop.priority(10):
            loop.call_soon(order.append, ("low", 0))
        loop.call_soon(order.append, ("default", 3))
        with aem_loop.priority(90):
            loop.call_soon(order.append, ("high", 0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not loop.statistics().fast_path
        return fast

    try:
        fast = loop.run_until_complete(main())
    finally:
        loop.close()
    assert fast == fast_path
    assert order == [("default", 0), ("default", 1), ("default", 2),
                     ("high", 0), ("default", 3), ("low", 0)]


def test_uvloop_fast_path_is_uvloops_own_call_soon():
    """On the fast path a future's callbacks reach uvloop's call_soon with no
    Python frame of aem's in between."""
    import sys

    def python_calls_while(fn):
        calls = []

        def profile(frame, event, arg):
            if event == "call":
                calls.append(frame.f_code.co_name)

        sys.setprofile(profile)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return calls

    loop = aem_loop.new_event_loop(backend="uvloop")
    try:
        assert loop.statistics().fast_path
        fut = loop.create_future()
        fut.add_done_callback(lambda f: None)
        # set_result schedules the callback through loop.call_soon
        assert "call_soon" not in python_calls_while(lambda: fut.set_result(None))
        loop.run_until_complete(fut)
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_first_priority_in_another_thread_ends_the_fast_path(backend):
    """The first priority checked in another thread ends the fast path of a
    loop that runs in this one (order by level from then on); a loop made
    after the process first used a priority starts off it."""
    import threading

    loop = aem_loop.new_event_loop(backend=backend)
    try:
        order = []

        async def main():
            assert loop.statistics().fast_path
            t = threading.Thread(target=aem_loop.priority, args=(aem_loop.Priority.HIGH,))
            t.start()
            await loop.run_in_executor(None, t.join)
            assert not loop.statistics().fast_path
            with aem_loop.priority(aem_loop.Priority.LOW):
                loop.call_soon(order.append, "low")
            loop.call_soon(order.append, "default")
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        assert order == ["default", "low"]
    finally:
        loop.close()
    later = aem_loop.new_event_loop(backend=backend)
    try:
        assert not later.statistics().fast_path
    finally:
        later.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_fast_path_work_yields_to_the_first_priority(backend):
    """A callback on the fast path that first uses a priority and queues
    urgent work: the urgent callback runs next, before the default work
    queued on the fast path (uvloop: the callbacks in uvloop's own queue are
    taken back and released after it)."""
    loop = aem_loop.new_event_loop(backend=backend)
    order = []

    def first():
        order.append("first")
        with aem_loop.priority(aem_loop.Priority.CRITICAL):
            loop.call_soon(order.append, "urgent")

    try:
        assert loop.statistics().fast_path
        loop.call_soon(first)
        for i in range(3):
            loop.call_soon(order.append, i)
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0))
        assert order == ["first", "urgent", 0, 1, 2]
        assert not loop.statistics().fast_path
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_callbacks_a_transport_queues_stay_behind_work_queued_before(backend):
    """When the fast path ends with work queued, that work is released one
    callback at a time, with libuv polling between time slices (uvloop
    backend).  A transport closed by the first of them queues its
    connection_lost: it must still run after the rest of that work, as on
    stock asyncio and uvloop (code that closes a connection and wakes the
    tasks that use it relies on that order)."""
    loop = aem_loop.new_event_loop(backend=backend, time_slice=0.0001)
    order = []
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    try:

        class Rec(asyncio.Protocol):
            def connection_lost(self, exc):
                order.append("lost")
                lost.set_result(None)

        def busy(tag, close=False):
            order.append(tag)
            end = time.perf_counter() + 0.001  # spends the 0.1 ms slice
            while time.perf_counter() < end:
                pass
            if close:
                transport.close()

        def first():
            order.append("first")
            with aem_loop.priority(aem_loop.Priority.HIGH):
                loop.call_soon(order.append, "urgent")

        async def main():
            nonlocal transport, lost
            lost = loop.create_future()
            transport, _ = await loop.create_connection(Rec, sock=cli)
            assert loop.statistics().fast_path
            loop.call_soon(first)
            loop.call_soon(busy, "A", True)
            loop.call_soon(busy, "B")
            loop.call_soon(busy, "C")
            await lost

        transport = lost = None
        loop.run_until_complete(main())
        assert order == ["first", "urgent", "A", "B", "C", "lost"]
    finally:
        for s in (lst, srv, cli):
            s.close()
        loop.close()


README_FIRST_EXAMPLE = """
import asyncio, sys, aem_loop
order = []
async def main():
    loop = asyncio.get_running_loop()
    loop.call_soon(order.append, "normal-1")
    with aem_loop.priority(aem_loop.Priority.HIGH):
        loop.call_soon(order.append, "HIGH")
    loop.call_soon(order.append, "normal-2")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
aem_loop.run(main(), backend=sys.argv[1], fast_path=sys.argv[2] == "on")
print(order)
"""


@pytest.mark.parametrize("fast_path", ["on", "off"])
@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_first_priority_in_a_fresh_interpreter_runs_first(backend, fast_path):
    """README's first use of a priority, as a new program meets it: the HIGH
    callback runs before the NORMAL work queued earlier."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", README_FIRST_EXAMPLE, backend, fast_path],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert out.stdout.strip() == "['HIGH', 'normal-1', 'normal-2']"


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_due_urgent_timer_runs_before_the_fast_path_backlog(backend):
    """Work queued on the fast path (a backlog of default callbacks, each
    longer than a time slice) when the first priority is used: a CRITICAL
    timer due at once runs within a slice, not after the backlog, as it
    would beside a backlog queued later."""
    import time

    loop = aem_loop.new_event_loop(backend=backend)
    order = []

    def step(i):
        end = time.perf_counter() + 0.001  # 5 time slices
        while time.perf_counter() < end:
            pass
        order.append(i)

    def first():
        with aem_loop.priority(aem_loop.Priority.CRITICAL):
            loop.call_at(loop.time(), order.append, "timer")

    try:
        assert loop.statistics().fast_path
        loop.call_soon(first)
        for i in range(50):
            loop.call_soon(step, i)
        loop.run_until_complete(asyncio.sleep(0.001))
        while len(order) < 51:
            loop.run_until_complete(asyncio.sleep(0))
        assert order.index("timer") <= 1, order
        assert [x for x in order if x != "timer"] == list(range(50))
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_threads_keep_their_order_across_the_first_priority(backend):
    """8 threads call call_soon_threadsafe while the loop's thread uses the
    first priority: every thread's callbacks run in the order it queued them."""
    import threading

    loop = aem_loop.new_event_loop(backend=backend)
    seen: dict[int, list[int]] = {t: [] for t in range(8)}
    per_thread = 300

    async def main():
        go = threading.Barrier(9)

        def produce(t):
            go.wait()
            for i in range(per_thread):
                loop.call_soon_threadsafe(seen[t].append, i)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        await loop.run_in_executor(None, go.wait)
        while sum(map(len, seen.values())) < 200:
            await asyncio.sleep(0)
        with aem_loop.priority(aem_loop.Priority.HIGH):
            await asyncio.sleep(0)  # the first priority, mid-stream
        for th in threads:
            await loop.run_in_executor(None, th.join)
        while sum(map(len, seen.values())) < 8 * per_thread:
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    for t, got in seen.items():
        assert got == list(range(per_thread)), t


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_fast_path_option_checked(backend):
    with pytest.raises(TypeError, match="fast_path"):
        aem_loop.new_event_loop(backend=backend, fast_path=1)
    loop = aem_loop.new_event_loop(backend=backend, fast_path=False)
    try:
        assert not loop.statistics().fast_path
    finally:
        loop.close()


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_threadsafe_then_call_soon_keep_fifo():
    loop = asyncio.get_running_loop()
    order = []
    done = loop.create_future()
    loop.call_soon_threadsafe(order.append, "threadsafe")
    loop.call_soon(order.append, "soon")
    loop.call_soon(done.set_result, None)
    await done
    assert order == ["threadsafe", "soon"]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_callbacks_get_their_arguments_and_context():
    """Callbacks with no, one and several arguments (the dispatch loop calls
    them in three ways) get exactly their arguments, in their own context."""
    import contextvars

    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    var = contextvars.ContextVar("var", default="unset")
    got = []

    def record(*args):
        got.append((args, var.get()))

    ctx = contextvars.copy_context()
    ctx.run(var.set, "mine")
    done = loop.create_future()
    loop.call_soon(record)
    loop.call_soon(record, None)
    loop.call_soon(record, (1, 2))
    loop.call_soon(record, "a", "b", "c", context=ctx)
    loop.call_later(0, record, "t")
    loop.call_later(0, done.set_result, None)
    await done
    assert got == [
        ((), "unset"), ((None,), "unset"), (((1, 2),), "unset"),
        (("a", "b", "c"), "mine"), (("t",), "unset"),
    ]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_callbacks_queued_by_a_protocol_get_their_arguments_in_order():
    """The same call shapes from a connection's data_received, which the
    transport calls with no callback of the loop running (on the uvloop
    backend these calls are handed to uvloop's queue by the loop's own
    call_soon, which forwards each shape its own way)."""
    import contextvars
    import socket

    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "mine")
    got = []
    done = loop.create_future()

    def record(*args):
        got.append((args, var.get()))

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            loop.call_soon(record)
            loop.call_soon(record, None)
            loop.call_soon(record, (1, 2), context=ctx)
            loop.call_soon(record, "a", "b", "c")
            loop.call_soon(callback=record)
            loop.call_soon(record, "a", "b", "c", context=ctx)
            loop.call_soon(lambda: done.set_result(data))

    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(Proto, sock=a)
    try:
        b.sendall(b"go")
        assert await done == b"go"
    finally:
        transport.close()
        b.close()
    assert got == [
        ((), "unset"), ((None,), "unset"), (((1, 2),), "mine"),
        (("a", "b", "c"), "unset"), ((), "unset"), (("a", "b", "c"), "mine"),
    ]


def test_uvloop_subclass_call_soon_is_not_shadowed_by_the_fast_path():
    from aem_loop.backends.uv import UVLoop

    calls = []

    class Mine(UVLoop):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Mine()
    try:
        assert loop.statistics().fast_path
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 1)
        assert loop.run_until_complete(fut) == 1
        assert calls and calls[0] == fut.set_result
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_debug_mode_from_the_environment(backend):
    """PYTHONASYNCIODEBUG=1 turns debug mode on while the loop is being
    built (uvloop's __init__ calls set_debug before the core exists)."""
    import os
    import subprocess
    import sys

    code = (
        "import asyncio, aem_loop\n"
        f"loop = aem_loop.new_event_loop(backend={backend!r})\n"
        "assert loop.get_debug() and not loop.statistics().fast_path\n"
        "print(loop.run_until_complete(asyncio.sleep(0, 'ok')))\n"
        "loop.close()\n"
    )
    env = dict(os.environ, PYTHONASYNCIODEBUG="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _random_program(ops: list, leveled: bool = False) -> list:
    """Run *ops* (see test_random_programs_order_like_stock) on the running
    loop's callbacks, timers, tasks and futures; return the trace.  With
    *leveled*, each op carries the priority it is made at (see
    test_programs_with_priorities_order_alike_on_both_backends), and the
    program ends when a task below every level used has run."""

    async def main() -> list:
        loop = asyncio.get_running_loop()
        trace: list = []
        handles: list = []
        tasks = []

        def soon(name, depth, p):
            trace.append(name)
            if depth:
                with aem_loop.priority(p):
                    handles.append(loop.call_soon(soon, name + "'", depth - 1, p))

        async def stepper(name, steps):
            for k in range(steps):
                trace.append((name, k))
                await asyncio.sleep(0)

        for i, op in enumerate(ops):
            kind, arg = op[0], op[1]
            p = op[2] if leveled else aem_loop.current_priority()
            name = f"{kind}{i}@{p}" if leveled else f"{kind}{i}"
            with aem_loop.priority(p):
                if kind == "soon":
                    handles.append(loop.call_soon(soon, name, arg, p))
                elif kind == "later0":
                    handles.append(loop.call_later(0, trace.append, name))
                elif kind == "cancel":
                    if handles:
                        handles[arg % len(handles)].cancel()
                elif kind == "task":
                    tasks.append(loop.create_task(stepper(name, arg)))
                elif kind == "future":
                    fut = loop.create_future()
                    fut.add_done_callback(lambda f, n=name: trace.append((n, f.result())))
                    handles.append(loop.call_soon(fut.set_result, arg))
            if kind == "yield":
                await asyncio.sleep(0)
        if leveled:
            async def drain():  # below every level used: runs when all else has
                for _ in range(30):
                    await asyncio.sleep(0)

            with aem_loop.priority(0):
                last = loop.create_task(drain())
            await last
        else:
            for _ in range(12):  # longest chain: 3 deep + 5 steps, with margin
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return trace

    return main()  # type: ignore[return-value]


_OPS = st.lists(
    st.tuples(st.sampled_from(["soon", "later0", "cancel", "task", "future", "yield"]),
              st.integers(0, 3)),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_random_programs_order_like_stock(ops):
    """Random mixes of call_soon chains, zero-delay timers, cancels, tasks,
    futures and yields run in exactly stock asyncio's order on the selector
    backend, on its fast path and on leveled dispatch, and on the uvloop
    backend as long as no timer is involved.  Where a due timer runs among
    callbacks of the same iteration is not specified by asyncio, and the
    loops differ: stock uvloop runs it before callbacks queued earlier,
    asyncio after them, and the uvloop backend's fast path (callbacks in
    uvloop's queue, timers in the core's) after the callbacks those
    callbacks queue."""
    reference = asyncio.run(_random_program(ops))
    for fast_path in (True, False):
        got = aem_loop.run(_random_program(ops), backend="selector", fast_path=fast_path)
        assert got == reference, ("selector", fast_path)
    no_timers = [op for op in ops if op[0] != "later0"]
    reference = asyncio.run(_random_program(no_timers))
    for fast_path in (True, False):
        got = aem_loop.run(_random_program(no_timers), backend="uvloop", fast_path=fast_path)
        assert got == reference, ("uvloop", fast_path)


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    "backend,fast_path",
    [("selector", True), ("selector", False), ("uvloop", True), ("uvloop", False)],
)
def test_wakeup_after_abort_sees_the_transport_closed(backend, fast_path, debug):
    """A task that aborts a transport and yields resumes after the transport's
    connection_lost (scheduled first), also when a callback was queued before
    the abort; stock asyncio and uvloop: the socket's fileno() is -1 by then.
    (anyio's ConnectedUDPSocket aclose-in-cancelled-scope test, which runs in
    debug mode, i.e. off the fast path, depends on it.)"""

    async def main():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        sock = transport.get_extra_info("socket")
        loop.call_soon(lambda: None)
        transport.abort()
        await asyncio.sleep(0)
        return sock.fileno()

    assert asyncio.run(main(), debug=debug) == -1  # the reference
    assert aem_loop.run(main(), backend=backend, fast_path=fast_path, debug=debug) == -1


@pytest.mark.asyncio
async def test_spent_slices_poll_only_when_io_more_urgent_than_the_backlog_is_ready():
    """A HIGH reader beside a NORMAL backlog of long callbacks: the reader runs
    right after the callback that made it ready, before the rest of the
    backlog.  The selector backend asks the urgent tier at each spent slice
    and polls in full only once the HIGH fd is ready; the uvloop backend ends
    the round at each spent slice so that libuv polls."""
    import socket
    import time

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    order: list[str] = []
    with aem_loop.priority(aem_loop.Priority.HIGH):
        loop.add_reader(a, lambda: (order.append("urgent"), a.recv(10)))

    def busy(i: int) -> None:
        end = time.monotonic() + 0.001  # several time slices
        while time.monotonic() < end:
            pass
        order.append(i)
        if i == 9:
            b.send(b"x")

    await asyncio.sleep(0)
    polls = loop.statistics().polls
    for i in range(20):
        loop.call_soon(busy, i)
    while len(order) < 21:
        await asyncio.sleep(0)
    extra = loop.statistics().polls - polls
    loop.remove_reader(a)
    a.close()
    b.close()
    assert order.index("urgent") == 10  # right after the callback that made it ready
    if loop.statistics().backend == "selector":
        assert extra < 8, extra  # not one full poll per spent slice (20 of them)


@pytest.mark.asyncio
async def test_urgent_connection_runs_before_a_backlog_of_default_callbacks():
    """A server made under HIGH beside 200 default callbacks queued from I/O
    (on the uvloop backend: handed to uvloop's queue, with checkpoints that
    ask whether an urgent fd is ready): data sent to it by the 10th callback
    is received long before the backlog ends, and nothing of either is lost
    or reordered."""
    import socket
    import time

    loop = asyncio.get_running_loop()
    order: list = []
    done = loop.create_future()
    accepted = loop.create_future()

    class Urgent(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport)

        def data_received(self, data):
            order.append("urgent")

    with aem_loop.priority(aem_loop.Priority.HIGH):
        server = await loop.create_server(Urgent, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    server_side = await accepted

    def busy(i: int) -> None:
        end = time.monotonic() + 0.0002  # a slice (0.5 ms) spans a few of them
        while time.monotonic() < end:
            pass
        order.append(i)
        if i == 10:
            client.send(b"x")
        if i == 199:
            done.set_result(None)

    class Kick(asyncio.Protocol):
        def data_received(self, data):
            for i in range(200):
                loop.call_soon(busy, i)

    try:
        await data_received_once(loop, Kick, done)
    finally:
        client.close()
        server_side.close()
        server.close()
        await server.wait_closed()
    assert [x for x in order if x != "urgent"] == list(range(200))
    assert order.count("urgent") == 1
    assert order.index("urgent") < 60, order.index("urgent")


@pytest.mark.asyncio
async def test_each_new_urgent_connection_is_accepted_before_a_backlog_of_default_callbacks():
    """A server made under HIGH beside 300 default callbacks queued from I/O:
    a client connects at the 10th callback, and again at the first callback
    after that connection was accepted (on the uvloop backend the first
    accept holds uvloop's queue behind it; the second comes while it is still
    held), and again after the second.  Each connection is accepted long
    before the backlog ends, and the backlog runs in order."""
    order = await urgent_connects_in_a_backlog(300, 0.0002, 3, lambda i, _: i == 10)
    assert [x for x in order if isinstance(x, int)] == list(range(300))
    marks = {x: order.index(x) for x in order if isinstance(x, str)}
    assert len(marks) == 6, marks
    for n in (1, 2, 3):
        assert marks[f"accepted-{n}"] - marks[f"connected-{n}"] < 60, marks


@pytest.mark.asyncio
async def test_a_connection_accepted_right_after_a_batch_of_default_callbacks_goes_first():
    """A callback queues 500 default callbacks, then connects to a server made
    under HIGH and sends to a default-priority connection: the loop's next
    poll accepts the one (on the uvloop backend libuv's, which queues
    connection_made behind the batch, and no checkpoint among the batch can
    see the listener ready any more) and reads the other, whose protocol
    queues a callback.  The connection is made before the 50th callback of
    the batch; the callback queued by the default connection runs after
    the whole batch, queued before it; the batch runs in order."""
    loop = asyncio.get_running_loop()
    order: list = []
    done = loop.create_future()
    accepted = loop.create_future()
    clients: list = []

    class Urgent(asyncio.Protocol):
        def connection_made(self, transport):
            order.append("accepted")
            accepted.set_result(transport)

    plain_ran = loop.create_future()

    def queued_by_plain() -> None:
        order.append("queued by plain")
        plain_ran.set_result(None)

    class Plain(asyncio.Protocol):
        def data_received(self, data):
            loop.call_soon(queued_by_plain)

    with aem_loop.priority(aem_loop.Priority.HIGH):
        server = await loop.create_server(Urgent, "127.0.0.1", 0)
    a, b = socket.socketpair()
    plain, _ = await loop.create_connection(Plain, sock=a)

    def busy(i: int) -> None:
        end = time.monotonic() + 0.00005
        while time.monotonic() < end:
            pass
        order.append(i)
        if i == 499:
            done.set_result(None)

    def batch() -> None:
        for i in range(500):
            loop.call_soon(busy, i)
        clients.append(socket.create_connection(server.sockets[0].getsockname()))
        b.send(b"x")

    loop.call_soon(batch)
    try:
        await done
        transport = await accepted
        transport.close()
        await plain_ran
    finally:
        for c in clients:
            c.close()
        plain.close()
        b.close()
        server.close()
        await server.wait_closed()
    assert [x for x in order if isinstance(x, int)] == list(range(500))
    assert order.index("accepted") < 50, order.index("accepted")
    assert order.index("queued by plain") > order.index(499), order.index("queued by plain")


@pytest.mark.parametrize("far_timer", [True, False])
@pytest.mark.asyncio
async def test_spent_slices_go_on_without_io_above_the_backlog(far_timer):
    """With no I/O registered above the backlog's level, a spent slice only
    picks up due timers: a NORMAL backlog of long callbacks runs in one round,
    and a HIGH timer set by one of them runs at the next spent slice, before
    the rest of the backlog -- whether or not a timer (at the backlog's
    level, which cannot preempt it) was pending when the round began."""
    import time

    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    order: list = []
    far = loop.call_later(3600, order.append, "never") if far_timer else None

    def busy(i: int) -> None:
        end = time.monotonic() + 0.001  # several time slices
        while time.monotonic() < end:
            pass
        order.append(i)
        if i == 4:
            with aem_loop.priority(aem_loop.Priority.HIGH):
                loop.call_later(0, order.append, "timer")

    done = loop.create_future()
    await asyncio.sleep(0)
    rounds = loop.statistics().polls
    for i in range(20):
        loop.call_soon(busy, i)
    loop.call_soon(done.set_result, None)
    await done
    if far is not None:
        far.cancel()
    assert order.index("timer") in (5, 6)  # at the next spent slice
    assert [x for x in order if x != "timer"] == list(range(20))
    if loop.statistics().backend == "uvloop":
        assert loop.statistics().polls - rounds <= 4


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(
    st.tuples(st.sampled_from(["soon", "soon", "cancel", "task", "future", "yield"]),
              st.integers(0, 3), st.sampled_from([50, 50, 50, 10, 75])),
    min_size=1, max_size=20))
def test_programs_with_priorities_order_alike_on_both_backends(ops):
    """Random mixes of callbacks, chains, tasks and futures at three levels
    run in the same order on the uvloop backend (fast path on or off: its
    hand-offs to uvloop's queue, the rounds behind and beside them) as on the
    selector backend's leveled dispatch, the reference for priorities."""
    reference = aem_loop.run(_random_program(ops, leveled=True), backend="selector",
                             fast_path=False)
    for fast_path in (False, True):
        got = aem_loop.run(_random_program(ops, leveled=True), backend="uvloop",
                           fast_path=fast_path)
        assert got == reference, fast_path


@pytest.mark.asyncio
async def test_a_round_cut_short_still_runs_its_share_before_later_callbacks():
    """Callbacks queued in the core (A1-A3, from a HIGH callback) and one a
    callback run from I/O queues after them (B, handed to uvloop's queue on
    the uvloop backend): A1 queues urgent work (U), which takes A3's place
    in the round; A3 still runs before B (the uvloop backend holds B until
    it has), and U right after A1."""

    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    order: list[str] = []
    done = loop.create_future()

    def a(name: str) -> None:
        order.append(name)
        if name == "A1":
            with aem_loop.priority(aem_loop.Priority.HIGH):
                loop.call_soon(order.append, "U")

    def high() -> None:
        order.append("H")
        with aem_loop.priority(aem_loop.Priority.NORMAL):
            for n in ("A1", "A2", "A3"):
                loop.call_soon(a, n)

    def x() -> None:
        order.append("X")
        loop.call_soon(order.append, "B")
        loop.call_soon(done.set_result, None)

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            order.append(data.decode())
            loop.call_soon(x)
            with aem_loop.priority(aem_loop.Priority.HIGH):
                loop.call_soon(high)

    await data_received_once(loop, Reader, done)
    assert order == ["go", "H", "X", "A1", "U", "A2", "A3", "B"]


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_a_misspelt_option_names_every_option(backend):
    with pytest.raises(TypeError, match=r"'fastpath'.*known options: time_slice, aging, "
                       r"strict, inherit, timer_slack, urgent_signals, fast_path"):
        aem_loop.new_event_loop(backend=backend, fastpath=False)


@pytest.mark.asyncio
@pytest.mark.backends("uvloop")
async def test_a_spent_hand_off_budget_with_nothing_in_the_core_starts_a_new_epoch():
    """Priorities in use, a streams ping-pong at the default level over
    three hand-off budgets of task wakeups (each made by uvloop's
    transport callbacks, outside the core): with nothing else in the core,
    every wakeup is handed to uvloop's queue and no core round is needed to
    end an epoch (a round at the back would take each wakeup made until it
    ran into the core); the bytes all arrive, in order."""
    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    trips = 3 * HANDOFF_MAX // 2  # two wakeups each: three budgets

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    before = loop.statistics()
    got = bytearray()
    for i in range(trips):
        writer.write(bytes([i % 256]))
        got += await reader.readexactly(1)
    after = loop.statistics()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert got == bytes(i % 256 for i in range(trips))
    assert after.polls - before.polls <= 1, after.polls - before.polls
    default = aem_loop.Priority.NORMAL  # the hand-offs are counted as dispatched
    assert after.dispatched[default] - before.dispatched.get(default, 0) >= trips


@pytest.mark.asyncio
async def test_an_urgent_connection_closed_beside_a_default_backlog_is_closed_before_it_ends():
    """Twenty default tasks of 0.2 ms steps (a backlog the core holds) and a
    server made under HIGH whose handler answers a line and closes: the
    connection is closed (connection_lost, after which the client reads its
    end) long before the backlog ends, on both backends (on uvloop the
    transport's connection_lost is uvloop's own callback, queued when the
    handler closes)."""
    loop = asyncio.get_running_loop()
    order: list = []
    lost = loop.create_future()
    stop = asyncio.Event()
    under_way = asyncio.Event()
    steps = [0]

    async def urgent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        writer.close()
        await writer.wait_closed()  # the transport's connection_lost ran
        order.append("lost")
        lost.set_result(None)

    async def worker() -> None:
        while not stop.is_set():
            end = time.monotonic() + 0.0002
            while time.monotonic() < end:
                pass
            steps[0] += 1
            order.append(steps[0])
            if steps[0] == 100:
                under_way.set()
            if steps[0] >= 2000:
                stop.set()
            await asyncio.sleep(0)

    with aem_loop.priority(aem_loop.Priority.HIGH):
        server = await asyncio.start_server(urgent, "127.0.0.1", 0)
    workers = [asyncio.create_task(worker()) for _ in range(20)]
    try:
        await under_way.wait()
        with socket.create_connection(server.sockets[0].getsockname()) as client:
            client.sendall(b"ping\n")
            at = steps[0]
            await lost
            done = steps[0]
            assert client.recv(10) == b"ping\n"
    finally:
        stop.set()
        await asyncio.gather(*workers)
        server.close()
        await server.wait_closed()
    assert done - at < 20, (at, done)  # less than a round of the backlog


@pytest.mark.asyncio
async def test_readers_ready_in_one_poll_run_by_level_fifo_within_each():
    """Readers registered at several levels, all made readable before the
    loop polls, in an order that switches level at every fd: they run
    highest level first, and within a level in the order they became ready
    (a poll's ready fds are queued per level in one pass)."""
    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    levels = [80, 10, 80, 50, 10, 50, 80, 10]
    pairs = [socket.socketpair() for _ in levels]
    order: list[int] = []
    done = loop.create_future()

    def reader(i: int, sock: socket.socket) -> None:
        sock.recv(1)
        loop.remove_reader(sock)
        order.append(i)
        if len(order) == len(levels):
            done.set_result(None)

    try:
        for i, (level, (a, _b)) in enumerate(zip(levels, pairs, strict=True)):
            with aem_loop.priority(level):
                loop.add_reader(a, reader, i, a)
        for _a, b in pairs:  # all readable before the next poll
            b.send(b"x")
        await done
    finally:
        for a, b in pairs:
            loop.remove_reader(a)
            a.close()
            b.close()
    assert order == sorted(range(len(levels)), key=lambda i: -levels[i])


@pytest.mark.asyncio
async def test_a_thread_wakes_a_loop_whose_io_all_sits_above_the_default_level():
    """Readers at level 80 and the loop's own wakeup reader (its self-pipe,
    at the default level), with and without another reader at the default
    level: each reader runs at its own level, urgent first, and a callback
    another thread hands in runs at its own level (what the pipe's reader
    runs at does not pass on to it)."""
    loop = asyncio.get_running_loop()
    await enter_priority_mode(loop)
    pairs = [socket.socketpair() for _ in range(2)]
    (u, u_peer), (d, d_peer) = pairs
    order: list[tuple[str, int]] = []
    woken: list[asyncio.Future[None]] = [loop.create_future() for _ in range(3)]

    def reader(name: str, sock: socket.socket) -> None:
        sock.recv(1)
        order.append((name, aem_loop.effective_priority()))

    def from_thread(i: int) -> None:
        order.append(("thread", aem_loop.effective_priority()))
        woken[i].set_result(None)

    def hand_in(i: int) -> None:  # from another thread; returns once handed in
        t = threading.Thread(target=loop.call_soon_threadsafe, args=(from_thread, i))
        t.start()
        t.join()

    try:
        loop.add_reader(d, reader, "default", d)
        with aem_loop.priority(80):
            loop.add_reader(u, reader, "urgent", u)
        d_peer.send(b"x")  # all ready before the next poll
        u_peer.send(b"x")
        hand_in(0)
        await woken[0]
        loop.remove_reader(d)  # the pipe alone at the default level
        u_peer.send(b"x")
        hand_in(1)
        await woken[1]
        hand_in(2)  # the pipe alone ready
        await woken[2]
    finally:
        for a, b in pairs:
            loop.remove_reader(a)
            a.close()
            b.close()
    first, second = order[:3], order[3:]
    assert first[0] == ("urgent", 80)
    assert sorted(first[1:]) == [("default", 50), ("thread", 50)]
    assert second == [("urgent", 80), ("thread", 50), ("thread", 50)]
