"""loop.statistics(): per-priority depth, dispatch counts, lateness, polls, slices."""

import asyncio
import dataclasses

import pytest

import aem_loop


@pytest.mark.asyncio
async def test_statistics_record():
    loop = asyncio.get_running_loop()
    before = loop.statistics()
    done = loop.create_future()
    for p in (10, 90):
        with aem_loop.priority(p):
            for _ in range(5):
                loop.call_soon(lambda: None)
    with aem_loop.priority(90):
        loop.call_later(0.001, done.set_result, None)
    st = loop.statistics()
    assert st.queued[10] == 5 and st.queued[90] == 5
    await done
    st = loop.statistics()
    assert st.dispatched[10] >= 5 and st.dispatched[90] >= 6
    assert st.lateness[90].samples >= 1 and st.lateness[90].p50 >= 0
    assert st.polls > before.polls
    assert st.backend in ("selector", "uvloop")
    assert st.timers_pending == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.polls = 0  # type: ignore[misc]


@pytest.mark.asyncio
async def test_cancelled_timers_do_not_count_as_pending():
    loop = asyncio.get_running_loop()
    hs = [loop.call_later(100, print) for _ in range(1000)]
    assert loop.statistics().timers_pending == 1000
    for h in hs:
        h.cancel()
    assert loop.statistics().timers_pending == 0


@pytest.mark.asyncio
async def test_lateness_keeps_sampling_under_load():
    """Samples keep coming while one level is drained in long rounds."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [5000]

    def cb():
        left[0] -= 1
        if left[0] > 0:
            loop.call_soon(cb)
            loop.call_soon(lambda: None)
        elif not done.done():
            done.set_result(None)

    # at a non-default level: on uvloop, default-priority work takes the fast path
    before = loop.statistics().lateness.get(60)
    with aem_loop.priority(60):
        loop.call_soon(cb)
    await done
    after = loop.statistics().lateness[60]
    assert after.samples - (before.samples if before else 0) > 100


@pytest.mark.asyncio
@pytest.mark.backends("selector")
async def test_selector_fast_path_keeps_counts_and_lateness():
    """On the selector backend's fast path (no priority used yet) the core
    still counts what it dispatches, skips cancelled handles, samples
    lateness at the default level and reports a failing callback as asyncio."""
    loop = asyncio.get_running_loop()
    assert loop.statistics().fast_path
    default = int(aem_loop.Priority.NORMAL)
    before = loop.statistics()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    ran = []
    for i in range(100):
        loop.call_soon(ran.append, i)
    dropped = loop.call_soon(ran.append, "cancelled")
    dropped.cancel()

    def boom():
        raise ValueError("boom")

    failing = loop.call_soon(boom)
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # counts are settled when a round ends
    loop.set_exception_handler(None)
    st = loop.statistics()
    assert st.fast_path
    assert ran == list(range(100))
    # 100 appends + boom + this task's step that returned from sleep(0)
    assert st.dispatched[default] - before.dispatched.get(default, 0) >= 101
    assert st.lateness[default].samples > (
        before.lateness[default].samples if default in before.lateness else 0)
    assert len(errors) == 1 and isinstance(errors[0]["exception"], ValueError)
    assert errors[0]["handle"] is failing
    assert errors[0]["message"].startswith("Exception in callback")
