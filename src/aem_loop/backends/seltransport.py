"""The selector backend's socket transport: reads into the loop's buffer.

asyncio's ``_SelectorSocketTransport`` reads with ``sock.recv(max_size)``: a
fresh 256 KiB bytes object per read, shrunk to what arrived.  While glibc's
mmap threshold is at its default (128 KiB) that is an mmap, an mremap and a
munmap per read; the threshold rises only after a large mmapped block has
been freed, so whether a server pays it depends on what the process
happened to allocate before (the same echo server measured 18k or 42k
requests/s from one process to the next).  Here every read goes into one
buffer the loop keeps (``recv_into``) and the protocol gets a bytes object
of exactly what arrived: the same data, in the same calls, as asyncio's,
without the large allocation.  BufferedProtocols keep asyncio's path
(they give their own buffer).
"""

from __future__ import annotations

from asyncio import protocols, selector_events
from typing import Any

__all__ = ["ReadIntoTransport"]


class ReadIntoTransport(selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    """asyncio's socket transport, reading into ``loop._aem_read_buffer``."""

    _aem_plain = True  # its protocol is not a BufferedProtocol

    def set_protocol(self, protocol: Any) -> None:
        super().set_protocol(protocol)
        self._aem_plain = not isinstance(protocol, protocols.BufferedProtocol)

    def _read_ready(self) -> None:
        # The fd's reader.  asyncio's calls _read_ready_cb, which set_protocol
        # points at one of the two read paths; a plain protocol's is read
        # here, one Python call less per read.
        if not self._aem_plain:
            self._read_ready__get_buffer()
            return
        if self._conn_lost:
            return
        buf: Any = self._loop._aem_read_buffer
        size = self.max_size
        try:
            n = self._sock.recv_into(buf if size == len(buf) else buf[:size])
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not n:
            self._read_ready__on_eof()
            return
        data = buf[:n].tobytes()
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    # what asyncio's set_protocol names for a plain protocol (same path)
    _read_ready__data_received = _read_ready
