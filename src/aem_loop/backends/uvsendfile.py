"""``loop.sendfile`` for the uvloop backend (libuv has no sendfile for streams).

The file is read in chunks in the default executor and written to the
transport, waiting while the transport asks to pause writing.  For the
duration, a small protocol is put in front of the user's protocol to hear
pause/resume; every other callback is forwarded, so no received data is
lost, and the user's protocol is restored before returning.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["SendfileMixin", "sendfile_fallback"]

# Read this much per executor call: asyncio's own fallback uses the same
# bound (constants.SENDFILE_FALLBACK_READBUFFER_SIZE, 256 KiB).
_CHUNK = 256 * 1024


class _Interposed(asyncio.Protocol):
    def __init__(self, loop: Any, transport: Any) -> None:
        self._loop = loop
        self._transport = transport
        self._proto = transport.get_protocol()
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        transport.set_protocol(self)

    async def drain(self) -> None:
        if self._lost is not None:
            raise ConnectionError("connection lost during sendfile") from self._lost
        if self._transport.is_closing():
            raise ConnectionError("connection closed during sendfile")
        if self._paused:
            self._waiter = self._loop.create_future()
            await self._waiter

    def _wake(self, exc: BaseException | None = None) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    def restore(self) -> None:
        self._transport.set_protocol(self._proto)
        if self._paused:  # hand the pending pause to the user's protocol
            self._proto.pause_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._proto.data_received(data)

    def eof_received(self) -> bool | None:
        return self._proto.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("connection lost")
        self._wake(ConnectionError("connection lost during sendfile"))
        self._proto.connection_lost(exc)


async def sendfile_fallback(
    loop: Any, transport: Any, file: Any, offset: int, count: int | None
) -> int:
    if offset:
        file.seek(offset)
    total = 0
    proto = _Interposed(loop, transport)
    try:
        while count is None or total < count:
            n = _CHUNK if count is None else min(_CHUNK, count - total)
            data = await loop.run_in_executor(None, file.read, n)
            if not data:
                break
            await proto.drain()
            transport.write(data)
            total += len(data)
        await proto.drain()
        return total
    finally:
        if total:
            file.seek(offset + total)
        proto.restore()


class SendfileMixin:
    """``loop.sendfile`` for the uvloop backend: the fallback, checked as asyncio checks."""

    async def sendfile(
        self,
        transport: Any,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send *file* over *transport* (read + write; libuv has no native path)."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported "
                f"for transport {transport!r}"
            )
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        return await sendfile_fallback(self, transport, file, offset, count)
