"""CapsulePool and cloner events on real processes.

Every test checks that no process is left: the pool fixture shuts the pool
down and asserts that the zygote and every capsule it saw are gone (not
zombies either: /proc has no entry); conftest checks fds, children, threads.
Waiting for a process to end uses a pidfd (an event), never a sleep.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures as cf
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

import aem_loop
from aem_loop import BrokenCapsulePool, CapsuleDied, CapsulePool, EventFlags

F = EventFlags

# -- functions the capsules run (module level: pickled by reference) ----------------


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def fail(msg: str) -> None:
    raise ValueError(msg)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def sleep_for(t: float) -> float:
    time.sleep(t)
    return t


def block_until(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.001)
    return "released"


def return_lock() -> object:
    return threading.Lock()


def modules_loaded(name: str) -> bool:
    return name in sys.modules


STATE = {"value": 0}


def read_state() -> int:
    return STATE["value"]


def set_state(v: int) -> None:
    STATE["value"] = v


def bump(n: int) -> tuple[int, int]:
    STATE["value"] += n
    return STATE["value"], os.getpid()


def served() -> list[str]:
    return [e.name for e in aem_loop.current_events()]


def init_fail() -> None:
    raise RuntimeError("no init for you")


def exit_first_time(path: str) -> None:
    """An initializer: the first capsule to run it dies before its HELLO."""
    try:
        open(path, "x").close()
    except FileExistsError:
        return
    os._exit(7)


def big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


# -- helpers -------------------------------------------------------------------


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 10.0, reaped_elsewhere: bool = False) -> bool:
    """Wait for *pid* (any process) to end, through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    # an exited child of another process may linger a moment as a zombie
    # until that parent reaps it; the zygote reaps at once.
    for _ in range(1000):
        if gone(pid) or (reaped_elsewhere and _zombie(pid)):
            return True
        select.select([], [], [], 0.001)
    return gone(pid)


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    p = CapsulePool(2, reserve=1)
    assert p.wait_ready(10)
    seen = set(p.pids())
    yield p
    seen |= set(p.pids())
    zpid = p.zygote_pid
    p.shutdown(wait=True)
    assert gone(zpid), "the zygote is left"
    left = [x for x in seen if not wait_gone(x)]
    assert not left, f"capsules left behind: {left}"


# -- round trips -------------------------------------------------------------------


def test_call_submit_map(pool: CapsulePool) -> None:
    assert pool.call(add, 2, 3) == 5
    assert pool.submit(add, 4, 5).result(10) == 9
    assert pool.submit(add, a=1, b=1).result(10) == 2
    here = os.getpid()
    assert pool.call(pid) != here and pool.call(pid) in pool.pids()
    # map keeps the input order even when later calls finish first
    durations = [0.05, 0.0, 0.03, 0.0, 0.01]
    assert list(pool.map(sleep_for, durations)) == durations


def test_large_arguments_and_results(pool: CapsulePool) -> None:
    payload = os.urandom(1 << 20)
    assert pool.call(len, payload) == 1 << 20
    assert pool.call(big, 1 << 20) == bytes(range(256)) * 4096


@pytest.mark.asyncio
async def test_run_and_run_in_executor(pool: CapsulePool) -> None:
    loop = asyncio.get_running_loop()
    assert await pool.run(add, 1, 2) == 3
    assert await loop.run_in_executor(pool, add, 3, 4) == 7
    results = await asyncio.gather(*(pool.run(add, i, i) for i in range(20)))
    assert results == [2 * i for i in range(20)]
    big_arg = os.urandom(300_000)
    assert await pool.run(len, big_arg) == 300_000


@pytest.mark.asyncio
async def test_default_executor(pool: CapsulePool) -> None:
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "cloner"):
        pytest.skip("stock asyncio accepts only a ThreadPoolExecutor")
    loop.set_default_executor(pool)
    try:
        assert await loop.run_in_executor(None, pid) in pool.pids()
    finally:
        loop._default_executor = None  # type: ignore[attr-defined]
        loop._aem_capsule_pool = None  # type: ignore[attr-defined]


# -- errors ----------------------------------------------------------------------------


def test_exception_with_remote_traceback(pool: CapsulePool) -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        pool.call(fail, "bad input")
    tb = str(info.value.__cause__)
    assert "in fail" in tb and 'raise ValueError(msg)' in tb
    with pytest.raises(ValueError, match="again"):
        pool.submit(fail, "again").result(10)


@pytest.mark.parametrize(
    "fn, code, sig",
    [(exit_with, 3, None), (kill_self, None, signal.SIGKILL), (segfault, None, signal.SIGSEGV)],
)
def test_crash_fails_only_its_call(pool: CapsulePool, fn: object, code: int | None,
                                   sig: int | None) -> None:
    others = [pool.submit(sleep_for, 0.05) for _ in range(3)]
    args = (3,) if fn is exit_with else ()
    bad = pool.submit(fn, *args)  # type: ignore[arg-type]
    more = [pool.submit(add, i, 1) for i in range(5)]
    with pytest.raises(CapsuleDied) as info:
        bad.result(10)
    e = info.value
    assert e.exitcode == code and e.signal == sig
    assert str(e.pid) in str(e)
    assert ("status 3" if code else signal.Signals(sig).name) in str(e)
    assert gone(e.pid) or wait_gone(e.pid)
    assert [f.result(10) for f in others] == [0.05] * 3
    assert [f.result(10) for f in more] == [i + 1 for i in range(5)]
    # replenished: back to its size, the dead one not among them
    assert pool.wait_ready(10)
    assert len(pool.pids()) == 3 and e.pid not in pool.pids()
    assert pool.statistics()["died"] >= 1


def test_waiting_thread_reads_its_reply(pool: CapsulePool) -> None:
    # result() on a running submit() future reads the reply in the waiting
    # thread (no timeout: polling; with one: select), crashes included.
    assert pool.submit(add, 40, 2).result() == 42
    assert pool.submit(sleep_for, 0.05).result(10) == 0.05
    with pytest.raises(CapsuleDied, match="exited with status 5"):
        pool.submit(exit_with, 5).result()
    with pytest.raises(TimeoutError):
        pool.submit(sleep_for, 0.3).result(0.01)  # left to the manager thread
    fut = pool.submit(sleep_for, 0.1)
    with pytest.raises(TimeoutError):
        fut.result(0.001)
    assert fut.result() == 0.1  # helped after all
    assert pool.wait_ready(10)
    assert pool.call(add, 1, 1) == 2


@pytest.mark.xfail(
    strict=False,
    reason="known race, open: the capsule running the call is sometimes SIGKILLed before "
           "cancel() (the reading thread then sees EBADF); seen in 2 of 3 full runs on 3.13, "
           "and on 3.11 when the scenario is repeated on one pool",
)
def test_cancel_while_a_thread_reads_the_reply(pool: CapsulePool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fut = pool.submit(block_until, str(tmp_path / "never"))
    while not fut.running():
        select.select([], [], [], 0.001)
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(fut.result())
        except BaseException as exc:  # what result() raised is the outcome
            outcome.append(type(exc))

    t = threading.Thread(target=wait)
    t.start()
    cap = next(c for c in pool._capsules.values() if c.call is fut._aem_call)
    while not cap.helper and t.is_alive():
        select.select([], [], [], 0.001)
    assert fut.cancel()
    t.join(10)
    assert not t.is_alive() and outcome == [cf.CancelledError]
    assert pool.call(add, 1, 1) == 2
    assert pool.wait_ready(10)


def test_sync_call_crash(pool: CapsulePool) -> None:
    with pytest.raises(CapsuleDied, match="exited with status 7"):
        pool.call(exit_with, 7)
    assert pool.call(add, 1, 1) == 2


@pytest.mark.asyncio
async def test_run_crash_and_concurrent_calls(pool: CapsulePool) -> None:
    tasks = [asyncio.ensure_future(pool.run(sleep_for, 0.02)) for _ in range(3)]
    with pytest.raises(CapsuleDied, match="SIGKILL"):
        await pool.run(kill_self)
    assert await asyncio.gather(*tasks) == [0.02] * 3
    assert await pool.run(add, 2, 2) == 4


def test_timeout_kills_and_replaces(pool: CapsulePool) -> None:
    before = set(pool.pids())
    with pytest.raises(TimeoutError, match="sleep_for"):
        pool.call(sleep_for, 30, timeout=0.2)
    assert pool.wait_ready(10)
    killed = before - set(pool.pids())
    assert len(killed) == 1 and all(wait_gone(p) for p in killed)
    assert pool.call(add, 1, 2) == 3


@pytest.mark.asyncio
async def test_run_timeout_and_cancel(pool: CapsulePool) -> None:
    with pytest.raises(TimeoutError):
        await pool.run(sleep_for, 30, timeout=0.2)
    task = asyncio.ensure_future(pool.run(block_until, "/nonexistent/never"))
    while pool.statistics()["busy"] == 0:
        await asyncio.sleep(0)
    busy = set(pool.pids())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pool.run(add, 5, 5) == 10
    assert pool.statistics()["died"] == 2
    assert any(wait_gone(p) for p in busy if p not in pool.pids())


def test_future_cancel_kills_running_call(pool: CapsulePool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fut = pool.submit(block_until, str(tmp_path / "never"))
    while not fut.running():
        select.select([], [], [], 0.001)
    busy = set(pool.pids())
    assert fut.cancel() and fut.cancelled()
    assert pool.statistics()["died"] == 1
    assert pool.call(add, 1, 1) == 2
    assert pool.wait_ready(10)
    killed = busy - set(pool.pids())
    assert len(killed) == 1 and all(wait_gone(p) for p in killed)


def test_unpicklable_input_and_result(pool: CapsulePool) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pool.call(lambda: 1)
    with pytest.raises(TypeError, match="cannot send"):
        pool.call(add, threading.Lock(), 1)
    fut = pool.submit(add, threading.Lock(), 1)
    with pytest.raises(TypeError, match="cannot send"):
        fut.result(10)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.call(return_lock)
    assert pool.call(add, 1, 2) == 3  # unharmed
    assert pool.statistics()["died"] == 0


def test_reserve_for_critical(pool: CapsulePool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    blockers = [pool.submit(block_until, str(gate)) for _ in range(2)]  # both normal capsules
    queued = pool.submit(add, 1, 1)  # NORMAL: must wait, the reserve is not for it
    with aem_loop.priority(aem_loop.Priority.CRITICAL):
        urgent = pool.submit(add, 40, 2)
    assert urgent.result(10) == 42  # ran on the reserve capsule
    assert pool.call(add, 1, 2, priority=aem_loop.Priority.CRITICAL) == 3
    assert not queued.done() and not any(b.done() for b in blockers)
    gate.write_text("go")
    assert queued.result(10) == 2
    assert [b.result(10) for b in blockers] == ["released"] * 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        CapsulePool(0)
    with pytest.raises(TypeError, match="size"):
        CapsulePool("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserve"):
        CapsulePool(1, reserve=-1)
    with pytest.raises(TypeError, match="preload"):
        CapsulePool(1, preload="json")
    with pytest.raises(TypeError, match="initializer"):
        CapsulePool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spin"):
        CapsulePool(1, spin="fast")  # type: ignore[arg-type]
    for bad in (-1e-6, 2.0, float("nan")):
        with pytest.raises(ValueError, match="spin"):
            CapsulePool(1, spin=bad)


def capsule_spin() -> float:
    from aem_loop.capsules import _wire

    return _wire.CAPSULE_SPIN


@pytest.mark.parametrize("prestarted", [False, True])
@pytest.mark.parametrize("spin", [0.0, 250e-6, None])
def test_spin_reaches_capsules_and_last_released_serves_next(
        prestarted: bool, spin: float | None) -> None:
    from aem_loop.capsules import _wire, prestart

    if prestarted:
        prestart()
    p = CapsulePool(2, reserve=0) if spin is None else CapsulePool(2, reserve=0, spin=spin)
    try:
        assert p.wait_ready(10)
        want = _wire.SPIN if spin is None else spin
        assert p.spin == want
        # sequential calls go to the capsule released last (it may still be
        # polling), so all to one capsule; both were asked for the setting
        assert len({p.call(os.getpid) for _ in range(20)}) == 1
        assert {f.result(10) for f in [p.submit(capsule_spin) for _ in range(4)]} == {want}
        assert len(p.pids()) == 2
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)


def test_preload_and_initializer() -> None:
    p = CapsulePool(1, reserve=0, preload=["colorsys"], initializer=set_state, initargs=(41,))
    try:
        assert p.call(modules_loaded, "colorsys")
        assert p.call(read_state) == 41
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)


def test_first_call_takes_a_starting_capsule() -> None:
    # The first call of a new pool sends its request before the capsule has
    # said HELLO and reads the HELLO itself; the capsule then serves on as a
    # regular member of the pool.
    p = CapsulePool(2, reserve=1)
    try:
        first = p.call(pid)
        assert p.wait_ready(10)
        assert first in p.pids()
        assert p.statistics()["idle"] == 2 and p.statistics()["idle_reserve"] == 1
        assert p.call(add, 2, 3) == 5
        seen = set(p.pids())
        assert len(seen) == 3 and p.statistics()["started"] == 3, p.statistics()
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)
    assert all(wait_gone(x) for x in seen)


def test_first_call_survives_a_capsule_dying_before_hello(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The claimed capsule exits in its initializer: the request never ran,
    # so the call is sent again to the replacement.
    p = CapsulePool(1, reserve=0, initializer=exit_first_time,
                    initargs=(str(tmp_path / "died"),))
    try:
        assert p.call(add, 20, 22) == 42
        assert p.statistics()["died"] == 1
        assert p.statistics()["started"] == 2
        seen = set(p.pids())
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)
    assert all(wait_gone(x) for x in seen)


def test_first_submit_takes_a_starting_capsule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # As call(): the request goes before the HELLO (the manager reads both).
    p = CapsulePool(2, reserve=1)
    try:
        first = p.submit(pid).result(10)
        assert p.wait_ready(10)
        assert first in p.pids() and p.statistics()["started"] == 3
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)
    # the capsule dies before its HELLO: the request never ran, it goes on
    q = CapsulePool(1, reserve=0, initializer=exit_first_time,
                    initargs=(str(tmp_path / "died"),))
    try:
        assert q.submit(add, 20, 22).result(10) == 42
        assert q.statistics()["died"] == 1
        seen = set(q.pids())
    finally:
        q.shutdown()
    assert gone(q.zygote_pid)
    assert all(wait_gone(x) for x in seen)
    # the initializer raises: the pool is broken and the call fails
    r = CapsulePool(1, reserve=0, initializer=init_fail)
    try:
        with pytest.raises(aem_loop.BrokenCapsulePool, match="no init for you"):
            r.submit(add, 1, 1).result(10)
    finally:
        r.shutdown()
    assert gone(r.zygote_pid)


_ATFORK_SCRIPT = r'''
import os, stat, sys
from aem_loop.capsules import CapsulePool
from aem_loop.capsules import _wire as w

# Like libuv's signal lock pipe: every child closes the recorded pipe by
# number and makes a new one.
pipe = list(os.pipe())

def reinit():
    os.close(pipe[0])
    os.close(pipe[1])
    pipe[:] = os.pipe()

os.register_at_fork(after_in_child=reinit)
pid = w.fork_clean()
if pid == 0:  # a template closing what it inherited keeps the handler's fds
    w._close_fds_except(set())
    ok = all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in pipe)
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "at-fork fds were closed"
for _ in range(3):
    p = CapsulePool(2, reserve=1)
    assert p.call(abs, -1) == 1 and p.submit(abs, -2).result(10) == 2
    assert p.wait_ready(10)
    st = p.statistics()
    p.shutdown()
    assert st["died"] == 0 and st["started"] == 3, st
print("ok")
'''


def test_fds_of_at_fork_handlers_survive_in_the_template() -> None:
    # libuv (uvloop) re-creates a pipe in every forked child and later closes
    # it by number: the zygote must keep it, or it reuses the numbers for its
    # sockets and capsules die before their HELLO.
    r = subprocess.run([sys.executable, "-c", _ATFORK_SCRIPT], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_failing_initializer_on_the_first_call() -> None:
    p = CapsulePool(1, reserve=0, initializer=init_fail)
    try:
        with pytest.raises(aem_loop.BrokenCapsulePool, match="no init for you"):
            p.call(add, 1, 1)
        with pytest.raises(aem_loop.BrokenCapsulePool):
            p.call(add, 1, 1)
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)


def test_failing_initializer_breaks_the_pool() -> None:
    p = CapsulePool(1, reserve=0, initializer=init_fail)
    try:
        assert p.wait_ready(10)
        with pytest.raises(aem_loop.BrokenCapsulePool, match="no init for you"):
            p.submit(add, 1, 1).result(10)
    finally:
        p.shutdown()
    assert gone(p.zygote_pid)


def test_shutdown_then_submit_and_cancel_futures() -> None:
    p = CapsulePool(1, reserve=0)
    assert p.wait_ready(10)
    running = p.submit(sleep_for, 0.1)
    assert running.running()
    waiting = [p.submit(add, i, i) for i in range(3)]
    p.shutdown(wait=True, cancel_futures=True)
    assert running.result(1) == 0.1
    assert all(f.cancelled() for f in waiting)
    with pytest.raises(RuntimeError, match="shutdown"):
        p.submit(add, 1, 1)
    assert gone(p.zygote_pid)


def test_parent_killed_workers_exit() -> None:
    code = (
        "import os, sys, aem_loop\n"
        "p = aem_loop.CapsulePool(2, reserve=1)\n"
        "p.wait_ready(10)\n"
        "print(p.zygote_pid, *p.pids(), flush=True)\n"
        "sys.stdin.readline()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 4
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(10) == -9
    proc.stdin.close()
    proc.stdout.close()
    # The capsules are reaped by the zygote.  The zygote itself, orphaned,
    # is reaped by init; where PID 1 does not reap (some containers) it stays
    # a zombie: dead, holding nothing.
    zygote, capsules = pids[0], pids[1:]
    assert all(wait_gone(p) for p in capsules), "orphaned capsules"
    assert wait_gone(zygote, reaped_elsewhere=True)


# -- cloner events -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fork_sees_parent_state_at_that_moment() -> None:
    loop = asyncio.get_running_loop()
    ev = aem_loop.cloner(read_state, flags=F.FORK, name="snap")
    STATE["value"] = 123
    try:
        assert await ev.activate() == 123
        STATE["value"] = 7
        assert await ev.activate() == 7
    finally:
        STATE["value"] = 0
    assert len(ev.children) == 2
    for ch in ev.children:
        assert ch.kind == "fork" and ch.done() and ch.exitcode == 0 and gone(ch.pid)
    assert await aem_loop.cloner(served, flags=F.FORK, name="who").activate() == ["who"]
    del loop


@pytest.mark.asyncio
async def test_fork_errors_and_death() -> None:
    with pytest.raises(ValueError, match="boom"):
        await aem_loop.cloner(fail, flags=F.FORK).activate("boom")
    with pytest.raises(CapsuleDied, match="status 5"):
        await aem_loop.cloner(exit_with, flags=F.FORK).activate(5)
    with pytest.raises(TimeoutError):
        await aem_loop.cloner(sleep_for, flags=F.FORK).activate(30, timeout=0.2)


@pytest.mark.asyncio
async def test_fork_nocldwait_is_reaped() -> None:
    ev = aem_loop.cloner(sleep_for, flags=F.FORK | F.NOCLDWAIT)
    child = await ev.activate(0.01)
    assert (isinstance(child, aem_loop.ChildProcess) and not child.done()) or child.done()
    assert await child.wait() == 0
    assert gone(child.pid)  # reaped by the loop, no zombie


@pytest.mark.asyncio
async def test_fork_nocldwait_failure_reaches_the_exception_handler() -> None:
    loop = asyncio.get_running_loop()
    seen = loop.create_future()
    loop.set_exception_handler(lambda lp, ctx: seen.done() or seen.set_result(ctx))
    try:
        child = await aem_loop.cloner(fail, flags=F.FORK | F.NOCLDWAIT).activate("forked boom")
        ctx = await seen
    finally:
        loop.set_exception_handler(None)
    assert isinstance(ctx["exception"], ValueError) and "forked boom" in str(ctx["exception"])
    assert "fire-and-forget" in ctx["message"]
    await child.wait()
    assert gone(child.pid)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_fork_nocldwait_child_outliving_its_loop_is_reaped_and_leaks_no_fd(backend) -> None:
    from aem_loop.capsules.cloner import join_reapers

    r, w = os.pipe()

    def wait_for_word() -> None:  # runs in the forked child
        os.close(w)
        os.read(r, 1)

    async def start() -> aem_loop.ChildProcess:
        return await aem_loop.cloner(wait_for_word, flags=F.FORK | F.NOCLDWAIT).activate()

    loop = aem_loop.new_event_loop(backend=backend)
    try:
        child = loop.run_until_complete(start())
    finally:
        loop.close()  # the child runs on
    os.close(r)
    assert not gone(child.pid) and not _zombie(child.pid)
    os.write(w, b"x")  # let it finish now that its loop is gone
    os.close(w)
    assert join_reapers(30)
    assert gone(child.pid)  # reaped: no zombie (the fixture checks fds and threads)


@pytest.mark.asyncio
async def test_capsule_event_and_children(pool: CapsulePool) -> None:
    ev = aem_loop.cloner(served, flags=F.CAPSULE, pool=pool, name="svc")
    assert "svc" in await ev.activate()
    assert len(ev.children) == 1 and ev.children[0].pid in pool.pids()
    assert ev.children[0].kind == "capsule"


@pytest.mark.asyncio
async def test_capsule_nocldwait_errors_reach_the_handler(pool: CapsulePool) -> None:
    loop = asyncio.get_running_loop()
    seen = loop.create_future()
    loop.set_exception_handler(lambda lp, ctx: seen.done() or seen.set_result(ctx))
    try:
        child = await aem_loop.cloner(fail, flags=F.CAPSULE | F.NOCLDWAIT,
                                      pool=pool).activate("later")
        assert child.pid in pool.pids()
        ctx = await seen
    finally:
        loop.set_exception_handler(None)
    assert isinstance(ctx["exception"], ValueError)
    assert "fire-and-forget" in ctx["message"]


@pytest.mark.asyncio
async def test_keepalive_dedicated_capsule(pool: CapsulePool) -> None:
    ev = aem_loop.cloner(bump, flags=F.CAPSULE | F.KEEPALIVE, pool=pool)
    got = [await ev.activate(i) for i in (1, 2, 3)]
    assert [v for v, _ in got] == [1, 3, 6]  # its state stays between activations
    pids = {p for _, p in got}
    assert len(pids) == 1
    (kept,) = pids
    assert pool.wait_ready(10)
    # dedicated: out of circulation, and the pool refilled to its size
    st = pool.statistics()
    assert st["dedicated"] == 1 and st["idle"] + st["idle_reserve"] == 3
    assert len(pool.pids()) == 4
    await ev.close()
    assert wait_gone(kept)
    assert pool.statistics()["dedicated"] == 0 and kept not in pool.pids()
    with pytest.raises(RuntimeError, match="closed"):
        await ev.activate(1)


@pytest.mark.asyncio
async def test_oneshot(pool: CapsulePool) -> None:
    ev = aem_loop.cloner(add, flags=F.CAPSULE | F.ONESHOT, pool=pool)
    assert await ev.activate(1, 2) == 3
    assert ev.closed
    with pytest.raises(RuntimeError, match="ONESHOT"):
        await ev.activate(1, 2)


@pytest.mark.asyncio
async def test_bad_flags(pool: CapsulePool) -> None:
    with pytest.raises(TypeError, match="EventFlags"):
        aem_loop.cloner(add, flags=4)
    with pytest.raises(ValueError, match="exactly one"):
        aem_loop.cloner(add, flags=F.FORK | F.CAPSULE, pool=pool)
    with pytest.raises(ValueError, match="exactly one"):
        aem_loop.cloner(add, flags=F.NOCLDWAIT)
    with pytest.raises(ValueError, match="KEEPALIVE needs"):
        aem_loop.cloner(add, flags=F.FORK | F.KEEPALIVE)
    with pytest.raises(ValueError, match="contradict"):
        aem_loop.cloner(add, flags=F.CAPSULE | F.KEEPALIVE | F.ONESHOT, pool=pool)
    with pytest.raises(ValueError, match="needs pool"):
        aem_loop.cloner(add, flags=F.CAPSULE)
    with pytest.raises(TypeError, match="callable"):
        aem_loop.cloner(3, flags=F.FORK)  # type: ignore[arg-type]


def _fds_a_child_program_inherits() -> list[int]:
    """Run inside a capsule: the fds a program started with inherited fds
    gets (beyond stdin/stdout/stderr)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c",
         "import os; print(' '.join(f for f in os.listdir('/proc/self/fd') if int(f) > 2))"],
        close_fds=False, capture_output=True, text=True, check=True)
    # the listing's own directory fd is the child's, not inherited
    return [int(f) for f in out.stdout.split()]


def test_a_program_started_by_capsule_code_gets_no_pool_socket(pool: CapsulePool) -> None:
    # close_fds=False hands the child every inheritable fd: the capsule's
    # socket to the pool must not be one (it could forge replies)
    with_listing = pool.call(_fds_a_child_program_inherits)
    import subprocess

    alone = subprocess.run(
        [sys.executable, "-c",
         "import os; print(' '.join(f for f in os.listdir('/proc/self/fd') if int(f) > 2))"],
        close_fds=True, capture_output=True, text=True, check=True).stdout.split()
    assert len(with_listing) == len(alone), (with_listing, alone)


def test_a_forked_child_holds_none_of_the_pool_and_cannot_use_it(pool: CapsulePool) -> None:
    """A fork of the pool's process closes the pool's sockets at once: it can
    neither read nor forge replies, nor keep the pool alive (shutdown in the
    parent returns while the child lives); using the pool there fails with a
    clear error."""
    assert pool.call(len, "abc") == 3
    fds = [pool._zsock.fileno(), *(c.fd for c in pool._capsules.values())]
    pool_sockets = {os.readlink(f"/proc/self/fd/{fd}") for fd in fds}
    r, wfd = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(go_w)
            os.close(r)
            held = []
            for f in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{f}") in pool_sockets:
                        held.append(int(f))
                except OSError:
                    pass
            try:
                pool.call(len, "x")
                err = "no error"
            except BrokenCapsulePool as exc:
                err = str(exc)
            pool.shutdown(wait=True)  # the parent's pool: nothing to do here
            os.write(wfd, repr((held, err)).encode())
            os.close(wfd)
            os.read(go_r, 1)  # lives on until the parent has shut the pool down
        except BaseException as exc:
            os.write(wfd, repr(([-1], repr(exc))).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    os.close(go_r)
    try:
        with os.fdopen(r) as f:
            got = f.read()
        held, err = ast.literal_eval(got)
        assert held == [], f"the child still holds the pool's sockets {held}"
        assert "forked from it" in err
        zpid = pool.zygote_pid
        pool.shutdown(wait=True)  # returns though the child still runs
        assert gone(zpid)
    finally:
        os.close(go_w)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_shutdown_on_the_loop_thread_with_runs_in_flight_does_not_deadlock(backend: str) -> None:
    """``with CapsulePool() as pool:`` in a coroutine whose body raises while
    ``pool.run`` calls are pending: the exit's shutdown(wait=True) runs on the
    loop thread, which reads those calls' replies.  It returns; the calls
    finish when the loop runs again, and then every process exits.  A later
    shutdown(wait=True) off the loop waits for the pool's own teardown (its
    manager thread closes the pool's fds after the zygote is reaped)."""
    import aem_loop

    async def main() -> tuple[list[object], CapsulePool, int, list[int]]:
        tasks = []
        with pytest.raises(KeyError), CapsulePool(2) as pool:
            zpid, pids = pool.zygote_pid, pool.pids()
            tasks = [asyncio.ensure_future(pool.run(pow, 3, i)) for i in range(4)]
            await asyncio.sleep(0)  # the calls are sent
            raise KeyError("the body fails with calls in flight")
        results = await asyncio.gather(*tasks)
        return results, pool, zpid, pids

    results, pool, zpid, pids = aem_loop.run(main(), backend=backend)
    assert results == [1, 3, 9, 27]
    assert wait_gone(zpid), "the zygote is left"
    assert [p for p in pids if not wait_gone(p)] == []
    pool.shutdown(wait=True)  # off the loop: returns when the teardown is done


def _ignore_sigterm() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return os.getpid()


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_shutdown_ends_stopped_and_stubborn_capsules(ignores_sigterm: bool) -> None:
    """A capsule that is SIGSTOPped (and one that also ignores SIGTERM) does
    not hold shutdown(wait=True) forever: SIGTERM with SIGCONT, then SIGKILL
    after the grace period; every process is gone when it returns."""
    pool = CapsulePool(2)
    assert pool.wait_ready(10)
    pids = pool.pids()
    zpid = pool.zygote_pid
    victim = pool.call(_ignore_sigterm) if ignores_sigterm else pids[0]
    os.kill(victim, signal.SIGSTOP)
    pool.shutdown(wait=True)
    assert gone(zpid), "the zygote is left"
    assert [p for p in pids if not wait_gone(p)] == []


@pytest.mark.parametrize("backend", ["selector", "uvloop"])
def test_loop_closed_with_a_run_pending_loses_no_capsule(backend: str) -> None:
    """loop.close() while ``await pool.run(...)`` is pending, the task then
    dropped: the capsule whose reply nobody will read is killed and replaced,
    later calls are served and shutdown finds nothing in flight."""
    import gc

    import aem_loop

    pool = CapsulePool(1)
    assert pool.wait_ready(10)
    zpid, first = pool.zygote_pid, pool.pids()
    loop = aem_loop.new_event_loop(backend=backend)

    async def start() -> asyncio.Future[object]:
        task = asyncio.ensure_future(pool.run(time.sleep, 5))
        await asyncio.sleep(0)  # the call is sent (a capsule is idle)
        return task

    task = loop.run_until_complete(start())
    loop.close()
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    del task
    gc.collect()  # the pending coroutine is closed
    assert pool.call(len, "ab", timeout=30) == 2
    assert pool.statistics()["busy"] == 0
    pids = set(first) | set(pool.pids())
    pool.shutdown(wait=True)
    assert gone(zpid)
    assert [p for p in pids if not wait_gone(p)] == []


def _exit_now(n: int) -> None:
    os._exit(3)


@pytest.mark.asyncio
async def test_keepalive_capsule_dying_idle_is_reported(pool: CapsulePool) -> None:
    """A KEEPALIVE capsule killed between activations: the next activation
    runs on a new one (its kept state gone) and the loop's exception handler
    says so, once; a death inside a call is that call's error, not reported
    again."""
    loop = asyncio.get_running_loop()
    reports: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    try:
        ev = aem_loop.cloner(bump, flags=F.CAPSULE | F.KEEPALIVE, pool=pool)
        v1, pid1 = await ev.activate(1)
        died = pool.statistics()["died"]
        os.kill(pid1, signal.SIGKILL)

        def noticed() -> bool:  # the pool has seen the death (not a call)
            with pool._idle_cond:
                return pool._idle_cond.wait_for(lambda: pool.died > died, 10)

        assert await loop.run_in_executor(None, noticed)
        v2, pid2 = await ev.activate(2)
        assert pid2 != pid1 and (v1, v2) == (1, 2)  # a fresh capsule: its state from 0
        assert len(reports) == 1
        assert f"pid {pid1}) died while idle" in reports[0]["message"]
        assert reports[0]["event"] is ev
        await ev.close()
        # death inside a call: the call raises, nothing more is reported
        ev2 = aem_loop.cloner(_exit_now, flags=F.CAPSULE | F.KEEPALIVE, pool=pool)
        with pytest.raises(CapsuleDied):
            await ev2.activate(1)
        with pytest.raises(CapsuleDied):
            await ev2.activate(1)  # on a new capsule, which dies in its call too
        assert len(reports) == 1
        await ev2.close()
    finally:
        loop.set_exception_handler(None)
