"""What every benchmark shares: the loops compared, machine facts, medians."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# The loops every benchmark compares, in table order.
LOOPS = ("asyncio", "uvloop", "aem-selector", "aem-uvloop")


class GCPauses:
    """The garbage collector's pauses while installed (``with GCPauses() as
    g:``): each in seconds (``pauses``) and their sum (``total``).  A full
    collection stops the process whatever the loop, so benchmarks report it
    apart from the loop's own delays."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.total = 0.0
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            d = time.perf_counter() - self._t
            self.pauses.append(d)
            self.total += d

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def make_console() -> Any:
    """A rich Console for the benchmark tables: the terminal's width, or when
    piped or redirected wide enough that no table is cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=250)


def loop_factory(name: str, **options: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of loop *name*; *options* (aem loops only) go to
    ``aem_loop.loop_factory``."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name.startswith("aem-"):
        import aem_loop

        return aem_loop.loop_factory(backend=name[4:], **options)
    raise ValueError(f"unknown loop {name!r}; known: {', '.join(LOOPS)}")


def machine() -> str:
    import uvloop

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python "
        f"{sys.version.split()[0]}, uvloop {uvloop.__version__}, {platform.system()} "
        f"{platform.release()}"
    )


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def settle_malloc() -> None:
    """Put glibc's allocator in the same state for every loop under test.

    Stock asyncio's transports read with ``recv(256 KiB)``; glibc serves a
    request above its mmap threshold (128 KiB at start) with mmap, and the
    threshold only rises when a larger mmapped block is freed whole.  Whether
    that has happened depends on incidental history (it differed with the
    current directory: importlib's listing of a big directory did it), and
    when it has not, every read costs mmap + mremap + munmap: stock asyncio's
    echo server ran 3x slower from the repository's directory than from
    /tmp.  Freeing one 1 MiB block raises the threshold above 256 KiB for
    whichever loop runs, as any long-running program's first big buffer does.
    """
    block = bytearray(1 << 20)
    del block


def pin(cpu: int) -> None:
    """Pin this process to one CPU when the machine has enough of them.

    Server and client each get a core of their own, so that they do not
    steal each other's time slices (on a 2-core VM that halved or doubled
    the figures from one run to the next).
    """
    n = os.cpu_count() or 1
    if n >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu % n})


class Flood:
    """*tasks* tasks that each burn *work* seconds of CPU per step and yield:
    the low-priority backlog the latency and periodic benchmarks run against."""

    def __init__(self, tasks: int, work: float) -> None:
        self._stop = False
        self._work = work
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._burn()) for _ in range(tasks)]

    async def _burn(self) -> None:
        while not self._stop:
            end = time.perf_counter() + self._work
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


def save_results(out: str | None, name: str, text: str, data: dict[str, object]) -> None:
    """Print *text* (a Markdown table) and, with *out*, write it as NAME.md
    and *data* with the machine as NAME.json in that directory."""
    import json
    import os

    print(text)
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"machine": machine(), **data}, f, indent=1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def child(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A benchmark's helper process (text mode, pipes as given); killed on
    the way out if it is still running (a measurement that failed)."""
    proc: subprocess.Popen[str] = subprocess.Popen(args, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ask_to_stop(proc: subprocess.Popen[str], line: str, timeout: float = 30.0) -> None:
    """Ask a child that reads commands on its stdin to stop, and wait for it
    (``subprocess.TimeoutExpired`` if it does not)."""
    assert proc.stdin is not None
    proc.stdin.write(line)
    proc.stdin.flush()
    proc.wait(timeout=timeout)


def stop_all(procs: list[subprocess.Popen[str]], line: str = "stop\n",
             timeout: float = 30.0) -> None:
    """On the way out of a measurement with several children that read
    commands on stdin: ask each to stop, wait for it, kill it if it does not
    (or if its stdin is gone already)."""
    for proc in procs:
        try:
            ask_to_stop(proc, line, timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
