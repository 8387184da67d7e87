"""Rounds at one level: once a round of work at one level ran without
anything (I/O, a timer) able to bring more urgent work by time, the next
rounds of such work skip the leveled dispatch.  Whatever can bring urgent
work -- a reader registered above that level, a timer set above it -- must
end that shortcut before the next round: these backlogs start right after
rounds of work at one level alone (the default level, and HIGH: a server
under Priority.HIGH)."""

import asyncio
import socket
import time

import pytest

import aem_loop
from conftest import enter_priority_mode


def _busy(order: list, i: int, then=None) -> None:
    end = time.monotonic() + 0.001  # several time slices (0.2 ms)
    while time.monotonic() < end:
        pass
    order.append(i)
    if then is not None:
        then(i)


# (the level of the backlog, the level above it that I/O or a timer comes at):
# rounds at the default level, and at a level above it (a server under HIGH)
LEVELS = [(None, aem_loop.Priority.HIGH), (aem_loop.Priority.HIGH, aem_loop.Priority.CRITICAL)]
LEVEL_IDS = ["default", "HIGH"]


async def _rounds() -> None:
    for _ in range(3):  # rounds of work at one level alone
        await asyncio.sleep(0)


def _run_at(loop: asyncio.AbstractEventLoop, coro, level) -> None:
    loop.run_until_complete(loop.create_task(coro, priority=level) if level is not None
                            else coro)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
@pytest.mark.parametrize(("base", "above"), LEVELS, ids=LEVEL_IDS)
def test_a_reader_registered_above_the_level_of_flat_rounds(backend, base, above):
    loop = aem_loop.new_event_loop(backend=backend)
    a, b = socket.socketpair()
    order: list = []

    def then(i: int) -> None:
        if i == 5:
            b.send(b"x")

    async def body() -> None:
        await _rounds()  # nothing registered above them
        with aem_loop.priority(above):
            loop.add_reader(a, lambda: (order.append("urgent"), a.recv(10)))
        for i in range(20):  # queued at this task's level: the next round holds it alone
            loop.call_soon(_busy, order, i, then)
        while len(order) < 21:
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(enter_priority_mode(loop))
        _run_at(loop, body(), base)
        loop.remove_reader(a)
    finally:
        loop.close()
        a.close()
        b.close()
    assert [x for x in order if x != "urgent"] == list(range(20))
    assert order.index("urgent") < 19, order  # within a slice or two, not after it all


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
@pytest.mark.parametrize(("base", "above"), LEVELS, ids=LEVEL_IDS)
def test_a_timer_set_above_the_level_of_flat_rounds_between_runs(backend, base, above):
    """A timer set while the loop is not running (no round to end), after
    rounds of work at one level alone, with a backlog queued beside it."""
    loop = aem_loop.new_event_loop(backend=backend)
    order: list = []
    try:
        loop.run_until_complete(enter_priority_mode(loop))
        _run_at(loop, _rounds(), base)
        with aem_loop.priority(above):
            loop.call_later(0.003, order.append, "timer")
        with aem_loop.priority(base if base is not None else aem_loop.Priority.NORMAL):
            for i in range(20):
                loop.call_soon(_busy, order, i)
            done = loop.create_future()
            loop.call_soon(done.set_result, None)
        loop.run_until_complete(done)
    finally:
        loop.close()
    assert [x for x in order if x != "timer"] == list(range(20))
    assert order.index("timer") < 19, order  # at a spent slice, not after the backlog


@pytest.mark.parametrize("backend", ["asyncio", "selector", "uvloop"])
def test_debug_mode_turned_on_after_default_rounds_times_callbacks(backend, caplog):
    """set_debug(True) on a running program (after plain default rounds):
    the next slow callback is reported, as on stock asyncio."""
    loop = asyncio.new_event_loop() if backend == "asyncio" else aem_loop.new_event_loop(
        backend=backend)
    try:
        if backend != "asyncio":
            loop.run_until_complete(enter_priority_mode(loop))
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        loop.set_debug(True)
        loop.slow_callback_duration = 0.001
        done = loop.create_future()
        loop.call_soon(_busy, [], 0)
        loop.call_soon(done.set_result, None)
        with caplog.at_level("WARNING", logger="asyncio"):
            loop.run_until_complete(done)
    finally:
        loop.close()
    assert any("Executing" in r.getMessage() and "_busy" in r.getMessage()
               for r in caplog.records), caplog.records
