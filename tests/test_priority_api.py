"""The priority API: names, validation, context manager, decorator, tasks."""

import asyncio
import contextvars

import pytest

import aem_loop
from aem_loop import Priority


def test_priority_names():
    assert [int(p) for p in Priority] == [0, 25, 50, 75, 99]
    assert Priority.NORMAL == 50
    assert aem_loop.current_priority() == Priority.NORMAL


@pytest.mark.parametrize("bad", [-1, 100, 1000])
def test_out_of_range_is_value_error(bad):
    with pytest.raises(ValueError, match=r"0\.\.99"):
        aem_loop.priority(bad)
    with pytest.raises(ValueError, match=r"0\.\.99"):
        aem_loop.set_priority(bad)


@pytest.mark.parametrize("bad", [1.5, "50", None, True])
def test_not_an_int_is_type_error(bad):
    with pytest.raises(TypeError, match="int"):
        aem_loop.priority(bad)
    with pytest.raises(TypeError, match="int"):
        aem_loop.set_priority(bad)


def test_context_manager_nests_and_restores():
    assert aem_loop.current_priority() == 50
    with aem_loop.priority(10) as p:
        assert p == 10 and aem_loop.current_priority() == 10
        with aem_loop.priority(Priority.CRITICAL):
            assert aem_loop.current_priority() == 99
        assert aem_loop.current_priority() == 10
    assert aem_loop.current_priority() == 50


def test_set_priority_stays_in_its_context():
    def inner():
        aem_loop.set_priority(7)
        return aem_loop.current_priority()

    assert contextvars.copy_context().run(inner) == 7
    assert aem_loop.current_priority() == 50


def test_decorator_on_plain_function():
    @aem_loop.priority(30)
    def f(x):
        return x, aem_loop.current_priority()

    assert f(1) == (1, 30)
    assert aem_loop.current_priority() == 50


def test_decorator_rejects_non_callable():
    with pytest.raises(TypeError, match="callable"):
        aem_loop.priority(3)(42)


def test_unknown_backend_lists_known():
    with pytest.raises(ValueError, match="known backends: selector, uvloop"):
        aem_loop.new_event_loop(backend="epoll")


class _Liar:
    """Says it is in any range it is asked about."""

    def __le__(self, other):
        return True

    __ge__ = __lt__ = __gt__ = __le__


class _LyingInt(_Liar, int):
    pass


class _LyingFloat(_Liar, float):
    pass


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="'timeslice'"):
        aem_loop.new_event_loop(timeslice=1)


@pytest.mark.parametrize(
    ("opts", "exc"),
    [
        ({"time_slice": 0}, ValueError),
        ({"time_slice": "1"}, TypeError),
        ({"aging": -1}, ValueError),
        ({"strict": 1}, TypeError),
        ({"strict": True, "aging": 0.1}, ValueError),
        ({"inherit": "no"}, TypeError),
        ({"inherit": 0}, TypeError),
        ({"time_slice": float("nan")}, ValueError),
        ({"aging": float("inf")}, ValueError),
        ({"timer_slack": -0.001}, ValueError),
        ({"time_slice": _LyingFloat(-1.0)}, ValueError),
    ],
)
@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_bad_options(backend, opts, exc):
    with pytest.raises(exc, match=next(iter(opts)).split("_")[0]):
        aem_loop.new_event_loop(backend=backend, **opts)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_priority_checked_by_value_not_by_its_own_comparisons(backend):
    # an int subclass whose comparisons say it is in range
    with pytest.raises(ValueError, match=r"0\.\.99, got 1000"):
        aem_loop.priority(_LyingInt(1000))
    loop = aem_loop.new_event_loop(backend=backend)
    try:
        async def main():
            with pytest.raises(ValueError, match="got -5"):
                asyncio.get_running_loop().create_task(asyncio.sleep(0),
                                                       priority=_LyingInt(-5))
            with aem_loop.priority(_LyingInt(75)):  # in range: used as the plain 75
                assert type(aem_loop.current_priority()) is int
                assert aem_loop.current_priority() == 75
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("bad", [5e-324, 1e-9, 0, -1, float("nan"), float("inf"), True, "1"])
@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_call_every_rejects_an_interval_no_loop_can_keep(backend, bad):
    loop = aem_loop.new_event_loop(backend=backend)
    try:
        with pytest.raises((TypeError, ValueError), match="interval"):
            loop.call_every(bad, lambda: None)
        assert loop.statistics().timers_pending == 0
    finally:
        loop.close()


def test_run_rejects_bad_backend_without_leaking_the_coroutine():
    async def main():
        return 1

    with pytest.raises(ValueError):
        aem_loop.run(main(), backend="nope")


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_run_and_runner(backend):
    async def main():
        return aem_loop.current_priority(), asyncio.get_running_loop().backend

    assert aem_loop.run(main(), backend=backend) == (50, backend)
    with asyncio.Runner(loop_factory=aem_loop.loop_factory(backend=backend)) as r:
        assert r.run(main()) == (50, backend)


@pytest.mark.asyncio
async def test_decorator_on_coroutine_function():
    @aem_loop.priority(Priority.HIGH)
    async def f():
        await asyncio.sleep(0)
        return aem_loop.current_priority()

    assert await f() == 75
    assert aem_loop.current_priority() == 50


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_create_task_priority_any_loop():
    async def f():
        return aem_loop.current_priority()

    assert await aem_loop.create_task(f(), priority=20) == 20
    assert await aem_loop.create_task(f()) == 50
    with pytest.raises(ValueError):
        aem_loop.create_task(f(), priority=100)
    with pytest.raises(TypeError):
        aem_loop.create_task(f(), priority="x")


@pytest.mark.asyncio
async def test_loop_create_task_priority_and_bad_values():
    loop = asyncio.get_running_loop()

    async def f():
        return aem_loop.current_priority()

    assert await loop.create_task(f(), priority=Priority.LOW) == 25
    coro = f()
    with pytest.raises(ValueError):
        loop.create_task(coro, priority=-5)  # noqa: RUF006 - raises
    assert coro.cr_frame is None  # closed: it can never run


@pytest.mark.asyncio
async def test_set_priority_in_task_changes_following_steps():
    loop = asyncio.get_running_loop()
    seen = []

    async def f():
        aem_loop.set_priority(90)
        await asyncio.sleep(0)
        seen.append(aem_loop.effective_priority())

    await loop.create_task(f())
    assert seen == [90]
    assert aem_loop.current_priority() == 50


@pytest.mark.asyncio
async def test_create_task_passes_other_keywords_to_the_base_loop():
    loop = asyncio.get_running_loop()

    async def f():
        return 1

    coro = f()
    with pytest.raises(TypeError):  # unknown to this Python's create_task
        loop.create_task(coro, no_such_option=True)  # noqa: RUF006 - raises
    coro.close()


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_create_task_name_context_and_task_factory_as_stock():
    loop = asyncio.get_running_loop()
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "mine")

    async def f():
        return var.get()

    t = loop.create_task(f(), name="named")
    assert t.get_name() == "named"
    assert await t == "unset"
    assert await loop.create_task(f(), context=ctx) == "mine"
    t = loop.create_task(f(), name="both", context=ctx)
    assert (t.get_name(), await t) == ("both", "mine")

    made = []

    def factory(loop, coro, **kw):
        task = asyncio.Task(coro, loop=loop, **kw)
        made.append((task, kw.get("context")))
        return task

    loop.set_task_factory(factory)
    try:
        assert await loop.create_task(f()) == "unset"
        assert await loop.create_task(f(), context=ctx) == "mine"
    finally:
        loop.set_task_factory(None)
    assert [c for _, c in made] == [None, ctx]


def test_a_connection_keeps_the_level_it_was_registered_at_on_the_selector_backend():
    """set_priority() inside data_received gives the level to what the
    callback creates from then on (a task here), while the connection's own
    readiness goes on at the level its reader was registered at (the level
    the backend counts its I/O at): selector backend, where readers are
    dispatched by level."""

    async def main() -> tuple[list[tuple[int, int]], list[int]]:
        loop = asyncio.get_running_loop()
        reads: list[tuple[int, int]] = []
        tasks: list[int] = []

        async def child() -> None:
            tasks.append(aem_loop.effective_priority())

        class Echo(asyncio.Protocol):
            def connection_made(self, t):
                self.t = t

            def data_received(self, d):
                reads.append((aem_loop.current_priority(), aem_loop.effective_priority()))
                self.task = loop.create_task(child())
                if len(reads) == 1:
                    aem_loop.set_priority(Priority.HIGH)
                self.t.write(d)

        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
        for i in range(3):
            w.write(b"%d" % i)
            assert await r.readexactly(1) == b"%d" % i
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return reads, tasks

    reads, tasks = aem_loop.run(main(), backend="selector")
    assert reads == [(50, 50), (75, 50), (75, 50)]
    assert tasks == [50, 75, 75]
