"""The selector backend's socket transport: reads without a large allocation.

asyncio's ``_SelectorSocketTransport`` reads with ``sock.recv(max_size)``: a
fresh 256 KiB bytes object per read, shrunk to what arrived.  While glibc's
mmap threshold is at its default (128 KiB) that is an mmap, an mremap and a
munmap per read; the threshold rises only after a large mmapped block has
been freed, so whether a server pays it depends on what the process
happened to allocate before (the same echo server measured 18k or 42k
requests/s from one process to the next).

Here a read first asks for at most 64 KiB (``recv(65536)``): a bytes object
from the heap, under glibc's default mmap threshold, which the kernel fills
and which is shrunk in place to what arrived (no copy, no mmap, whatever the
process allocated before).  Only when those 64 KiB came full may more be
waiting: the same call reads the rest, up to ``max_size`` in all as asyncio's
one ``recv``, into a buffer the loop keeps (``recv_into``), and the protocol
gets the two joined.  So the protocol gets the same data in the same calls
as from asyncio's transport.  BufferedProtocols keep asyncio's path (they
give their own buffer).

asyncio's streams (``start_server``, ``open_connection``) put a
``StreamReaderProtocol`` on the transport, whose ``data_received`` looks its
reader up through a property and a weak reference and calls
``reader.feed_data(data)``: two Python frames per read that do nothing else.
When the protocol's class has that ``data_received`` and that property
(stock, or a subclass that overrides neither; on every Python version this
package supports they are the same code), the transport does the same steps
itself: the weak reference, then ``feed_data`` -- the reader gets the same
data in the same calls, and a reader already collected gets nothing, as
before.  Any other protocol, or an instance given its own
``data_received`` before its first read, is called as asyncio calls it.
"""

from __future__ import annotations

from asyncio import protocols, selector_events, streams
from typing import Any

__all__ = ["ReadIntoTransport"]

# The first read of each readiness: under glibc's default mmap threshold.
_FIRST = 65536

_SRP = streams.StreamReaderProtocol
_SRP_DATA = _SRP.data_received
_SRP_READER = _SRP._stream_reader  # the property (looked up on the class)


def _feeds_its_reader(protocol: Any) -> bool:
    """Whether *protocol*'s data_received is StreamReaderProtocol's own:
    look its reader up and ``feed_data`` (see above)."""
    cls = type(protocol)
    return (cls.data_received is _SRP_DATA and getattr(cls, "_stream_reader", None) is _SRP_READER
            and "data_received" not in getattr(protocol, "__dict__", ()))


class ReadIntoTransport(selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    """asyncio's socket transport, reading 64 KiB at a time first (see above)."""

    _aem_plain = True  # its protocol is not a BufferedProtocol
    # its protocol is a StreamReaderProtocol (see above); None: not known
    # yet (decided at the first read, after connection_made)
    _aem_stream: bool | None = None
    # an error the second read of a readiness found while the protocol, given
    # the first's data, paused reading: reported at the next read
    _aem_reset: BaseException | None = None
    # eof_received returning true keeps it open and nothing else: a protocol
    # may close it from there itself (events.classify does)
    _aem_eof_keeps_open = True

    def set_protocol(self, protocol: Any) -> None:
        super().set_protocol(protocol)
        self._aem_plain = not isinstance(protocol, protocols.BufferedProtocol)
        self._aem_stream = None

    def _read_ready(self) -> None:
        # The fd's reader.  asyncio's calls _read_ready_cb, which set_protocol
        # points at one of the two read paths; a plain protocol's is read
        # here, one Python call less per read.
        if not self._aem_plain:
            self._read_ready__get_buffer()
            return
        if self._conn_lost:
            return
        size = self.max_size
        sock = self._sock
        try:
            data = sock.recv(_FIRST if size >= _FIRST else size)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not data:
            error = self._aem_reset
            if error is not None:  # found after data the protocol paused on (below)
                self._aem_reset = None
                self._fatal_error(error, "Fatal read error on socket transport")
                return
            self._read_ready__on_eof()
            return
        error = None
        if len(data) == _FIRST and size > _FIRST:
            # more may be waiting: the rest of what asyncio's one recv takes
            buf: Any = self._loop._aem_read_buffer
            try:
                n = sock.recv_into(buf[:size - _FIRST])
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # after the data, as asyncio's next read would
                n = 0
                error = exc
            if n:
                data += buf[:n]
        try:
            stream = self._aem_stream
            if stream is None:
                stream = self._aem_stream = _feeds_its_reader(self._protocol)
            if stream:
                # StreamReaderProtocol.data_received's steps (see above)
                ref = self._protocol._stream_reader_wr
                reader = None if ref is None else ref()
                if reader is not None:
                    reader.feed_data(data)
            else:
                self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return
        if error is not None and not self._closing:  # closed: asyncio reads no more
            if self._paused:
                # asyncio reads no more until resumed, and its next read then
                # finds the error: so here (that read finds end of file, the
                # socket's error was taken by this one)
                self._aem_reset = error
            else:
                self._fatal_error(error, "Fatal read error on socket transport")

    # what asyncio's set_protocol names for a plain protocol (same path)
    _read_ready__data_received = _read_ready
