"""loop.call_soon as asyncio users meet it, whichever way a backend
serves it (outside debug mode the loops' own attribute, a closure over the
core's queues; the class's method in debug mode and for subclasses): a
closed loop refuses, debug mode turned on and off again records where
handles were made and keeps the priority order, and a subclass's own
call_soon sees every callback."""

import asyncio

import pytest
import uvloop

import aem_loop
from aem_loop.backends.selector import SelectorLoop
from aem_loop.backends.uv import UVLoop
from conftest import enter_priority_mode, new_loop

CLASSES = {"selector": SelectorLoop, "uvloop": UVLoop}
STOCK = {"selector": asyncio.SelectorEventLoop, "uvloop": uvloop.Loop}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["asyncio", "selector", "uvloop"])
def test_call_soon_on_a_closed_loop_raises_as_stock(backend, fast_path):
    loop = new_loop(backend, fast_path)
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert ran == [1]
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(ran.append, 2)
    assert "call_soon" not in vars(loop) or backend == "asyncio"


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["asyncio", "uvloop-stock", "selector", "uvloop"])
def test_a_keyword_argument_other_than_context_is_refused_as_stock(backend, fast_path):
    loop = uvloop.new_event_loop() if backend == "uvloop-stock" else new_loop(backend, fast_path)
    try:
        if backend in ("selector", "uvloop"):
            loop.run_until_complete(enter_priority_mode(loop))
        ran: list[int] = []
        with pytest.raises(TypeError, match="arg"):
            loop.call_soon(ran.append, arg=1)
        with pytest.raises(TypeError, match="arg"):
            loop.call_soon(ran.append, 1, arg=2)
        loop.call_soon(ran.append, 3, context=None)
        loop.run_until_complete(asyncio.sleep(0))
        assert ran == [3]
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_debug_mode_on_and_off_again_keeps_the_order_and_records_sources(backend):
    loop = new_loop(backend, True)
    try:
        loop.run_until_complete(enter_priority_mode(loop))
        for debug in (True, False, True):
            loop.set_debug(debug)
            order: list[str] = []
            loop.call_soon(order.append, "normal")
            with aem_loop.priority(aem_loop.Priority.HIGH):
                h = loop.call_soon(order.append, "HIGH")
            loop.run_until_complete(asyncio.sleep(0))
            assert order == ["HIGH", "normal"], debug
            tb = h._source_traceback
            if debug:  # "created at" names this test, not a frame of the loop's
                assert tb and tb[-1].filename == __file__, tb
            else:
                assert not tb
    finally:
        loop.close()


def _subclass_trace(base: type, **kw) -> list[str]:
    """The callbacks a subclass of *base* sees in its own call_soon while a
    task awaits a future and a child task that yields once."""
    seen: list[str] = []

    class Counting(base):  # type: ignore[misc, valid-type]
        def call_soon(self, callback, *args, context=None):
            seen.append(getattr(callback, "__name__", type(callback).__name__))
            return super().call_soon(callback, *args, context=context)

    loop = Counting(**kw)

    async def child() -> int:
        await asyncio.sleep(0)
        return 7

    async def main() -> int:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 5)
        return await fut + await asyncio.ensure_future(child())

    try:
        assert loop.run_until_complete(main()) == 12
    finally:
        loop.close()
    return seen


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_a_subclass_call_soon_sees_every_callback(backend, fast_path):
    """The same callbacks, in the same order, as a subclass of the stock loop
    (asyncio's for the selector backend, uvloop's for the uvloop backend)."""
    stock = _subclass_trace(STOCK[backend])
    assert "set_result" in stock and len(stock) >= 6, stock
    assert _subclass_trace(CLASSES[backend], fast_path=fast_path) == stock
