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
