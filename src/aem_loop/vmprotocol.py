"""A BufferedProtocol that receives into vmtable blocks (no allocation per read).

Subclass :class:`BlockProtocol` and override :meth:`block_received`; each
call hands over a :class:`~aem_loop.vmtable.Block` holding exactly the bytes
that were read.  The block belongs to the callee, which releases it when done.

To send a block, use :meth:`BlockProtocol.write_block`, not
``transport.write(block.view)`` followed by ``release()``: transports may
keep a reference to the buffer until it is on the wire (uvloop queues writes
until the end of the loop iteration; asyncio >= 3.12 queues memoryviews), so
``write_block`` keeps the block until the transport's write buffer is empty
and releases it then.  Works with ``loop.create_server``/``create_connection``
on any asyncio loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .vmtable import Block, VMTable

__all__ = ["BlockProtocol"]


class BlockProtocol(asyncio.BufferedProtocol):
    """Reads into blocks of ``chunk`` bytes from *table*."""

    def __init__(self, table: VMTable, *, chunk: int = 65536) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        self.table = table
        self.chunk = chunk
        self._block: Block | None = None
        self._in_flight: list[Block] = []  # written, not yet known to be sent
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def write_block(self, block: Block) -> None:
        """Write *block* to the transport; it is released once sent."""
        self._release_sent()
        self.transport.write(block.view)
        self._in_flight.append(block)
        self._release_sent()

    def _release_sent(self) -> None:
        """Release written blocks the transport no longer holds."""
        if not self._in_flight:
            return
        t = self.transport
        if t is not None and t.get_write_buffer_size():
            return  # data still queued: it may be in any of them
        self._in_flight = [b for b in self._in_flight if not b.try_release()]
        if self._in_flight and t is None:
            # closed, but libuv finishes a write request one iteration later
            asyncio.get_running_loop().call_soon(self._release_sent)

    def get_buffer(self, sizehint: int) -> memoryview:
        self._release_sent()
        if self._block is None:
            self._block = self.table.alloc(self.chunk)
        return self._block.view

    def buffer_updated(self, nbytes: int) -> None:
        block, self._block = self._block, None
        assert block is not None
        # The transport may still hold the full view during this call, so the
        # block is cut down, not re-made: it is released as a whole later.
        block.truncate(nbytes)
        self.block_received(block)

    def block_received(self, block: Block) -> None:
        """Override: called with each block read.  Default: release it."""
        block.release()

    def resume_writing(self) -> None:
        self._release_sent()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._block is not None:
            self._block.release()
            self._block = None
        self.transport = None  # the transport is done with every buffer now
        self._release_sent()
