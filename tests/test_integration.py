"""Unmodified third-party asyncio code on aem loops: aiohttp, anyio, asyncio.Runner."""

import asyncio

import aiohttp
import anyio
import pytest
from aiohttp import web

import aem_loop
from conftest import AEM_BACKENDS


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_aiohttp_server_and_client():
    async def hello(request):
        body = await request.read()
        return web.json_response({"len": len(body), "prio": aem_loop.current_priority()})

    app = web.Application()
    app.router.add_post("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    with aem_loop.priority(70):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                *(
                    session.post(f"http://127.0.0.1:{port}/", data=b"x" * (i * 1000))
                    for i in range(20)
                )
            )
            bodies = [await r.json() for r in results]
            for r in results:
                r.release()
        assert [b["len"] for b in bodies] == [i * 1000 for i in range(20)]
        assert {b["prio"] for b in bodies} == {70}
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("backend", AEM_BACKENDS)
def test_anyio_run_with_loop_factory(backend):
    async def main():
        results = []

        async def worker(i):
            await anyio.sleep(0)
            results.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(worker, i)
        send, recv = anyio.create_memory_object_stream(5)
        async with send, recv:
            await send.send("m")
            msg = await recv.receive()
        return sorted(results), msg, asyncio.get_running_loop().backend

    out = anyio.run(
        main,
        backend="asyncio",
        backend_options={"loop_factory": aem_loop.loop_factory(backend=backend)},
    )
    assert out == (list(range(10)), "m", backend)


@pytest.mark.parametrize("backend", AEM_BACKENDS)
def test_asyncio_runner_loop_factory(backend):
    async def main():
        async with asyncio.TaskGroup() as tg:
            ts = [tg.create_task(asyncio.sleep(0.001, i)) for i in range(5)]
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return [t.result() for t in ts]

    factory = aem_loop.loop_factory(backend=backend)
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main()) == [0, 1, 2, 3, 4]
        assert runner.get_loop().backend == backend


@pytest.mark.parametrize("backend", AEM_BACKENDS)
def test_aiohttp_run_app_on_aem_loop(backend):
    """web.run_app with an explicit aem loop, stopped by the app itself."""
    loop = aem_loop.new_event_loop(backend=backend)
    seen = {}

    async def on_startup(app):
        async def stop():
            seen["backend"] = asyncio.get_running_loop().backend
            raise web.GracefulExit

        app["stopper"] = asyncio.get_running_loop().create_task(stop())

    app = web.Application()
    app.on_startup.append(on_startup)
    try:
        web.run_app(app, host="127.0.0.1", port=0, loop=loop, print=None,
                    handle_signals=False)
    finally:
        if not loop.is_closed():
            loop.close()
    assert seen == {"backend": backend}


def test_pytest_plugin_option(pytester):
    pytester.makepyfile(
        """
        import asyncio, pytest

        @pytest.mark.asyncio
        async def test_loop():
            print("BACKEND", asyncio.get_running_loop().backend)
        """
    )
    result = pytester.runpytest_subprocess("--aem-loop=all", "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "BACKEND selector" in out and "BACKEND uvloop" in out
