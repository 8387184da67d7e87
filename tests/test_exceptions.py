"""Errors in callbacks reach the exception handler; the loop keeps running."""

import asyncio

import pytest

import aem_loop


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_exception_in_callback_goes_to_handler_and_loop_continues():
    loop = asyncio.get_running_loop()
    caught = []
    loop.set_exception_handler(lambda lp, ctx: caught.append(ctx))
    ran = loop.create_future()

    def boom():
        raise ZeroDivisionError("boom")

    with aem_loop.priority(90):
        h1 = loop.call_soon(boom)
    loop.call_soon(ran.set_result, "after")
    h2 = loop.call_later(0.001, boom)
    assert await ran == "after"
    await asyncio.sleep(0.005)
    assert len(caught) == 2
    assert all(isinstance(c["exception"], ZeroDivisionError) for c in caught)
    # the report is Handle._run's: the same keys, message and handle as stock
    assert [c["handle"] for c in caught] == [h1, h2]
    assert all(set(c) == {"message", "exception", "handle"} for c in caught)
    assert all(c["message"].startswith("Exception in callback ") for c in caught)
    assert all("boom" in c["message"] for c in caught)
    loop.set_exception_handler(None)


@pytest.mark.parametrize("loop_name", ["asyncio", "aem-selector"])
def test_handle_with_its_own_run_queued_by_base_code_runs_its_run(loop_name):
    """asyncio's base code queues handles on loop._ready; the core calls a
    plain handle's callback itself, so a Handle class with its own _run must
    still see that _run called (and a cancelled one skipped)."""
    from aem_loop.bench.common import loop_factory

    ran = []

    class Traced(asyncio.Handle):
        def _run(self):
            ran.append(self._args[0])
            super()._run()

    loop = loop_factory(loop_name)()
    try:
        loop._ready.append(Traced(ran.append, ("a",), loop, None))
        skipped = Traced(ran.append, ("b",), loop, None)
        loop._ready.append(skipped)
        skipped.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert ran == ["a", "a"]


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_task_exception_propagates():
    async def bad():
        await asyncio.sleep(0)
        raise KeyError("k")

    with pytest.raises(KeyError):
        await asyncio.create_task(bad())


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_keyboard_interrupt_stops_loop_cleanly(backend):
    loop = aem_loop.new_event_loop(backend=backend)

    def interrupt():
        raise KeyboardInterrupt

    try:
        with aem_loop.priority(80):
            loop.call_soon(interrupt)
        loop.call_soon(lambda: None)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert loop._aem.current == -1
        # the loop can run again afterwards
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_call_soon_checks():
    loop = asyncio.get_running_loop()

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_closed_loop_refuses_work(backend):
    loop = aem_loop.new_event_loop(backend=backend)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(print)


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_debug_mode_handles_record_where_they_were_made():
    """In debug mode a handle's source traceback ends at the caller's frame, as
    on stock asyncio (outside debug mode handles are built on a faster path)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        for make in (lambda: loop.call_soon(print), lambda: loop.call_later(10, print),
                     lambda: loop.call_at(loop.time() + 10, print),
                     lambda: loop.call_soon_threadsafe(print)):
            h = make()
            tb = h._source_traceback
            assert isinstance(tb, list) and tb, make
            assert tb[-1][2] == "<lambda>", (make, tb[-1])
            h.cancel()
    finally:
        loop.set_debug(False)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_removing_fds_after_close_answers_false(backend):
    """As stock asyncio (CPython's test_remove_fds_after_closing): readers and
    writers registered before close() are removed afterwards without error."""
    import socket

    loop = aem_loop.new_event_loop(backend=backend)
    r, w = socket.socketpair()
    try:
        loop.add_reader(r, lambda: None)
        loop.add_writer(w, lambda: None)
        loop.close()
        assert loop.remove_reader(r) is False
        assert loop.remove_writer(w) is False
    finally:
        r.close()
        w.close()


@pytest.mark.asyncio
@pytest.mark.conformance
@pytest.mark.parametrize("prioritized", [False, True])
async def test_debug_mode_reports_each_slow_callback_once_by_its_own_name(caplog, prioritized):
    """asyncio's debug mode logs "Executing <handle> took N seconds" for a
    callback over slow_callback_duration: once per callback, task step and
    timer, naming it (not a wrapper of the loop's, not twice)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0  # every callback counts as slow
    done = loop.create_future()

    def plain_callback():
        pass

    def timer_callback():
        done.set_result(None)

    async def task_body():
        pass

    try:
        with caplog.at_level("WARNING", logger="asyncio"):
            with aem_loop.priority(80 if prioritized else aem_loop.Priority.NORMAL):
                loop.call_soon(plain_callback)
                await loop.create_task(task_body())
                loop.call_later(0.001, timer_callback)
            await done
            await asyncio.sleep(0)
    finally:
        loop.set_debug(False)
        loop.slow_callback_duration = 0.1
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executing")]
    for name in ("plain_callback", "task_body", "timer_callback"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert not [m for m in messages if "_aem" in m or "run_handed_off" in m], messages
    timer = next(m for m in messages if "timer_callback" in m)
    assert timer.startswith("Executing <TimerHandle")


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_debug_mode_reports_the_loops_own_handles_too(caplog):
    """A transport's connection_made runs from a handle of the loop's own
    (uvloop schedules it in C): debug mode reports it as the stock loop
    does, once for the server's connection and once for the client's."""
    loop = asyncio.get_running_loop()
    made = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            made.set_result(None)

    loop.set_debug(True)
    loop.slow_callback_duration = 0.0
    try:
        with caplog.at_level("WARNING", logger="asyncio"):
            server = await loop.create_server(Server, "127.0.0.1", 0)
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1])
            await made
            await asyncio.sleep(0)
    finally:
        loop.set_debug(False)
        loop.slow_callback_duration = 0.1
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    messages = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("Executing") and "connection_made" in r.getMessage()]
    assert len(messages) == 2, messages
