"""An urgent heartbeat keeps its period while 500 tasks flood the loop.

    python examples/priority_demo.py [selector|uvloop]

The heartbeat is due every 5 ms and runs at CRITICAL; the flood runs at the
default priority, each step burning 100 us.  On stock asyncio the heartbeat
would wait for all 500 steps (~50 ms) each time.
"""

import asyncio
import sys
import time

import aem_loop


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            end = time.perf_counter() + 0.0001
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(flood()) for _ in range(500)]
    late = []

    @aem_loop.priority(aem_loop.Priority.CRITICAL)
    async def heartbeat() -> None:
        t = loop.time()
        for _ in range(200):
            t += 0.005
            await asyncio.sleep(max(0.0, t - loop.time()))
            late.append(loop.time() - t)

    await heartbeat()
    stop.set()
    await asyncio.gather(*tasks)
    late.sort()
    st = loop.statistics()
    print(f"backend {st.backend}: heartbeat lateness p50 {late[100] * 1e3:.2f} ms, "
          f"max {late[-1] * 1e3:.2f} ms over {len(late)} beats; "
          f"{st.slices} slices, {st.inherited} inherited steps")


if __name__ == "__main__":
    aem_loop.run(main(), backend=sys.argv[1] if len(sys.argv) > 1 else "selector")
