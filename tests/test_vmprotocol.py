"""BlockProtocol: an echo server reading into vmtable blocks, on every loop."""

import asyncio
import os

import pytest

from aem_loop import BlockProtocol, VMTable


class Echo(BlockProtocol):
    def block_received(self, block):
        self.write_block(block)


@pytest.mark.asyncio
@pytest.mark.conformance
@pytest.mark.parametrize("zone", ["uzone", "vzone"])
async def test_block_protocol_echo_no_loss_no_leak(zone):
    loop = asyncio.get_running_loop()
    table = VMTable(1 << 20, zone=zone, min_block=1024)
    server = await loop.create_server(lambda: Echo(table, chunk=16384), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client():
        payload = os.urandom(300_000)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(payload)
        w.write_eof()
        got = await r.readexactly(len(payload))
        w.close()
        await w.wait_closed()
        return got == payload

    assert all(await asyncio.gather(*(client() for _ in range(8))))
    server.close()
    await server.wait_closed()
    st = table.statistics()
    assert st.allocs > 8 and st.allocs == st.releases and table.live_blocks == 0
    table.close()


def test_bad_chunk():
    with VMTable(1024) as t, pytest.raises(ValueError, match="chunk"):
        BlockProtocol(t, chunk=0)
