"""An aiohttp app on aem_loop: /health answers at HIGH priority while /work floods.

    python examples/aiohttp_app.py [selector|uvloop] [PORT]

/work on PORT (default 8080), /health on PORT + 1; PORT 0: ports chosen by
the system (printed).  Ctrl-C stops it.
"""

import asyncio
import sys

from aiohttp import web

import aem_loop


async def work(request: web.Request) -> web.Response:
    total = 0
    for _ in range(200):
        total += sum(range(2000))
        await asyncio.sleep(0)
    return web.Response(text=f"{total}\n")


async def health(request: web.Request) -> web.Response:
    return web.Response(text=f"ok at priority {aem_loop.current_priority()}\n")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/work", work)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    # A second site for health checks: its connections run at HIGH.
    health_app = web.Application()
    health_app.router.add_get("/health", health)
    health_runner = web.AppRunner(health_app)
    await health_runner.setup()
    with aem_loop.priority(aem_loop.Priority.HIGH):
        await web.TCPSite(health_runner, "127.0.0.1", port + 1 if port else 0).start()
    work_port, health_port = runner.addresses[0][1], health_runner.addresses[0][1]
    print(f"work on http://127.0.0.1:{work_port}/work, "
          f"health on http://127.0.0.1:{health_port}/health (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await health_runner.cleanup()


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "selector"
    try:
        aem_loop.run(main(int(sys.argv[2]) if len(sys.argv) > 2 else 8080), backend=backend)
    except KeyboardInterrupt:  # the sites were cleaned up as main() was cancelled
        print("stopped")
