"""An aiohttp app on aem_loop: /health answers at HIGH priority while /work floods.

    python examples/aiohttp_app.py [selector|uvloop]      # serves on 127.0.0.1:8080
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


async def main() -> None:
    app = web.Application()
    app.router.add_get("/work", work)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 8080).start()
    # A second site for health checks: its connections run at HIGH.
    health_app = web.Application()
    health_app.router.add_get("/health", health)
    health_runner = web.AppRunner(health_app)
    await health_runner.setup()
    with aem_loop.priority(aem_loop.Priority.HIGH):
        await web.TCPSite(health_runner, "127.0.0.1", 8081).start()
    print("work on http://127.0.0.1:8080/work, health on http://127.0.0.1:8081/health")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await health_runner.cleanup()


if __name__ == "__main__":
    aem_loop.run(main(), backend=sys.argv[1] if len(sys.argv) > 1 else "selector")
