"""get_debug, create_future and create_task as asyncio users meet them,
whichever way a backend serves them (outside debug mode the selector
backend's loop has C callables for the first two in the instance and makes
asyncio Tasks without asyncio's create_task frames): debug mode turned on
and off again, a closed loop, and a subclass's own methods."""

import asyncio

import pytest
import uvloop

from aem_loop.backends.selector import SelectorLoop
from aem_loop.backends.uv import UVLoop
from conftest import new_loop

CLASSES = {"asyncio": asyncio.SelectorEventLoop, "uvloop-stock": uvloop.Loop,
           "selector": SelectorLoop, "uvloop": UVLoop}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["asyncio", "selector", "uvloop"])
def test_debug_mode_on_and_off_again_reaches_futures_and_tasks(backend, fast_path):
    loop = new_loop(backend, fast_path)
    try:
        for debug in (False, True, False, True, False):
            loop.set_debug(debug)
            assert loop.get_debug() is debug
            fut = loop.create_future()
            assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
            task = loop.create_task(asyncio.sleep(0, "slept"))
            # debug mode records where each was made (a task: by its caller)
            assert bool(fut._source_traceback) is debug
            tb = task._source_traceback
            assert bool(tb) is debug and (not debug or tb[-1].filename == __file__), tb
            fut.cancel()
            assert loop.run_until_complete(task) == "slept"
    finally:
        loop.close()
    assert not {"get_debug", "create_future"} & set(vars(loop))  # no cycle left


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["asyncio", "selector", "uvloop"])
def test_create_task_on_a_closed_loop_raises_as_stock(backend, fast_path):
    loop = new_loop(backend, fast_path)
    loop.close()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.create_task(coro)
    finally:
        coro.close()


@pytest.mark.parametrize("backend", ["asyncio", "uvloop-stock", "selector", "uvloop"])
def test_a_subclass_s_get_debug_and_create_future_are_used(backend):
    """Every Future and Task asks its loop's get_debug when it is made, and
    create_future is the subclass's, as on the stock loops."""
    asked: list[str] = []

    class MyFuture(asyncio.Future):  # type: ignore[type-arg]
        pass

    class Sub(CLASSES[backend]):  # type: ignore[misc, valid-type]
        def get_debug(self) -> bool:
            asked.append("get_debug")
            return False

        def create_future(self) -> asyncio.Future:  # type: ignore[type-arg]
            asked.append("create_future")
            return MyFuture(loop=self)

    loop = Sub()
    try:
        fut = loop.create_future()
        assert type(fut) is MyFuture
        del asked[:]
        loop.create_task(asyncio.sleep(0)).cancel()
        fut.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert "get_debug" in asked
