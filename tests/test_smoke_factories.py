import asyncio

import pytest

from conftest import backend_of


@pytest.mark.asyncio
@pytest.mark.conformance
async def test_runs_on_each_loop():
    loop = asyncio.get_running_loop()
    assert backend_of(loop) in ("asyncio", "selector", "uvloop")
    assert await asyncio.sleep(0, "x") == "x"
