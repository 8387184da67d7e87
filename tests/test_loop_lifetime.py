"""A closed loop is freed when its last reference goes, as stock asyncio's
is: no reference cycle through it is left for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import aem_loop


async def _serve_one_round_trip() -> None:
    """Priorities, a server under HIGH (urgent I/O), a connection, timers."""
    loop = asyncio.get_running_loop()
    with aem_loop.priority(aem_loop.Priority.HIGH):
        await asyncio.sleep(0)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readexactly(4))
        await w.drain()
        w.close()
        await w.wait_closed()

    with aem_loop.priority(aem_loop.Priority.HIGH):
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    w.write(b"ping")
    assert await r.readexactly(4) == b"ping"
    w.close()
    await w.wait_closed()
    loop.call_later(3600, print).cancel()
    fired = loop.create_future()
    loop.call_later(0.001, fired.set_result, None)
    await fired
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("backend", ["asyncio", "selector", "uvloop"])
def test_a_closed_loop_is_freed_without_the_garbage_collector(backend: str) -> None:
    gc.collect()
    gc.disable()
    try:
        loop = (asyncio.new_event_loop() if backend == "asyncio"
                else aem_loop.new_event_loop(backend=backend))
        try:
            loop.run_until_complete(_serve_one_round_trip())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        ref = weakref.ref(loop)
        del loop
        assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
    finally:
        gc.enable()
