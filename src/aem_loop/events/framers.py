"""Framers: how a reactive job turns a byte stream into complete messages.

A framer is any object with this small interface (the four below are
ready-made; a custom one needs only ``feed`` and ``eof``)::

    feed(data: bytes) -> list        # the messages completed by data, in order
    eof() -> list                    # at end of stream; raises IncompleteMessage
                                     # if a message was cut short
    buffered() -> int                # bytes held for an incomplete message (optional)

``feed`` raises :class:`FrameTooLarge` when a message grows past the
framer's ``max_len`` (so buffering is always bounded) and
:class:`BadMessage` when the bytes cannot be framed at all.  After an error
the stream cannot be resynchronised: the job reports the error to the
handler and stops reading the source.

Chunking never matters: any split of the same stream into ``feed`` calls
yields the same messages (tests check it with hypothesis).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BadMessage",
    "FrameTooLarge",
    "Framer",
    "FramingError",
    "HTTPHead",
    "HTTPRequest",
    "IncompleteMessage",
    "LengthPrefixed",
    "Lines",
    "Raw",
    "check_framer",
]

# Defaults: a line or an HTTP head larger than 64 KiB is an attack or a bug
# (aiohttp and nginx refuse heads far smaller); a length-prefixed message
# may be a real payload, so up to 16 MiB.
DEFAULT_LINE_MAX = 64 * 1024
DEFAULT_HEAD_MAX = 64 * 1024
DEFAULT_MESSAGE_MAX = 16 * 1024 * 1024


class FramingError(ValueError):
    """The bytes of a source could not be framed into messages.

    ``messages`` holds the messages that ``feed`` completed before the
    error, in the same call (they are not lost: the job delivers them).
    """

    messages: list[Any] = []  # (never mutated: _complete sets a new list per instance)


def _complete(exc: FramingError, out: list[Any]) -> FramingError:
    exc.messages = out
    return exc


class FrameTooLarge(FramingError):
    """A message grew past the framer's ``max_len`` (or an HTTP body past ``max_body``)."""

    def __init__(self, message: str, *, limit: int, size: int, what: str = "message") -> None:
        super().__init__(message)
        self.limit = limit
        self.size = size
        self.what = what


class BadMessage(FramingError):
    """Bytes that no message of this framer can start with (e.g. a malformed HTTP head)."""


class IncompleteMessage(FramingError):
    """The stream ended inside a message; ``partial`` holds the bytes received."""

    def __init__(self, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.partial = partial


@runtime_checkable
class Framer(Protocol):
    def feed(self, data: bytes) -> list[Any]: ...

    def eof(self) -> list[Any]: ...


def check_framer(framer: object) -> Any:
    """*framer* if it has the framer interface, else a TypeError naming what is missing."""
    missing = [m for m in ("feed", "eof") if not callable(getattr(framer, m, None))]
    if missing:
        raise TypeError(
            f"framer must have {' and '.join(m + '()' for m in missing)} "
            f"(see aem_loop.framers), got {framer!r}"
        )
    return framer


def _check_limit(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 byte, got {value!r}")
    return value


def _check_max_body(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_body must be an int number of bytes, not {value!r}")
    if value < 0:
        raise ValueError(f"max_body must be >= 0 bytes, got {value!r}")
    return value


class Raw:
    """Every chunk read is a message (no buffering, nothing to frame)."""

    max_len = None

    def feed(self, data: bytes) -> list[Any]:
        return [bytes(data)] if data else []

    def eof(self) -> list[Any]:
        return []

    def buffered(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "Raw()"


class _Framing:
    """feed() for the framers that buffer: _feed appends to *out*; what it
    completed before an error travels with the error."""

    def _feed(self, data: bytes, out: list[Any]) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[Any]:
        out: list[Any] = []
        try:
            self._feed(data, out)
        except FramingError as exc:
            raise _complete(exc, out) from None
        return out


class Lines(_Framing):
    """Messages separated by *sep* (not included in the message).

    A line longer than *max_len* bytes is a :class:`FrameTooLarge`; so is a
    stream that buffers more than *max_len* bytes without a separator.  At
    end of stream a last line without separator is a message too (as
    ``StreamReader.readline`` returns it), unless *final_sep* is required.
    """

    def __init__(self, sep: bytes = b"\n", *, max_len: int = DEFAULT_LINE_MAX,
                 require_final_sep: bool = False) -> None:
        if not isinstance(sep, (bytes, bytearray)) or not sep:
            raise TypeError(f"sep must be non-empty bytes, not {sep!r}")
        self.sep = bytes(sep)
        self.max_len = _check_limit(max_len, "max_len")
        self.require_final_sep = bool(require_final_sep)
        self._buf = bytearray()
        self._scan = 0  # where the search for sep resumes

    def _feed(self, data: bytes, out: list[Any]) -> None:
        buf = self._buf
        buf += data
        sep = self.sep
        # the last separator: everything before it splits in C
        end = buf.rfind(sep, max(0, self._scan - len(sep) + 1))
        if end >= 0:
            lines = bytes(buf[:end]).split(sep)
            del buf[:end + len(sep)]
            if max(map(len, lines)) > self.max_len:
                for i, line in enumerate(lines):
                    if len(line) > self.max_len:
                        out.extend(lines[:i])
                        raise FrameTooLarge(
                            f"line of {len(line)} bytes is over max_len={self.max_len}",
                            limit=self.max_len, size=len(line), what="line",
                        )
            out.extend(lines)
        self._scan = len(buf)
        # a line of max_len bytes may wait here with part of a long separator
        if len(buf) > self.max_len + len(sep) - 1:
            raise FrameTooLarge(
                f"more than max_len={self.max_len} bytes without a separator",
                limit=self.max_len, size=len(buf), what="line",
            )

    def eof(self) -> list[Any]:
        rest = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        if not rest:
            return []
        if self.require_final_sep:
            raise IncompleteMessage(f"stream ended inside a line ({len(rest)} bytes)", rest)
        return [rest]

    def buffered(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"Lines(sep={self.sep!r}, max_len={self.max_len})"


class LengthPrefixed(_Framing):
    """Messages preceded by their length: *size* bytes (1, 2, 4 or 8), *byteorder*.

    A declared length over *max_len* is a :class:`FrameTooLarge` at once,
    before any of its bytes are buffered.
    """

    def __init__(self, size: int = 4, byteorder: str = "big", *,
                 max_len: int = DEFAULT_MESSAGE_MAX) -> None:
        if size not in (1, 2, 4, 8) or isinstance(size, bool):
            raise ValueError(f"size must be 1, 2, 4 or 8 bytes, got {size!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        self.size = size
        self.byteorder = byteorder
        self._order: Literal["big", "little"] = "big" if byteorder == "big" else "little"
        self.max_len = _check_limit(max_len, "max_len")
        self._buf = bytearray()

    def _feed(self, data: bytes, out: list[Any]) -> None:
        buf = self._buf
        buf += data
        size = self.size
        pos = 0
        while len(buf) - pos >= size:
            n = int.from_bytes(buf[pos:pos + size], self._order)
            if n > self.max_len:
                raise FrameTooLarge(
                    f"declared length {n} is over max_len={self.max_len}",
                    limit=self.max_len, size=n,
                )
            if len(buf) - pos - size < n:
                break
            out.append(bytes(buf[pos + size:pos + size + n]))
            pos += size + n
        if pos:
            del buf[:pos]
        return

    def eof(self) -> list[Any]:
        rest = bytes(self._buf)
        self._buf.clear()
        if rest:
            raise IncompleteMessage(
                f"stream ended inside a length-prefixed message ({len(rest)} bytes)", rest
            )
        return []

    def buffered(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"LengthPrefixed(size={self.size}, byteorder={self.byteorder!r}, " \
               f"max_len={self.max_len})"


@dataclasses.dataclass(frozen=True, slots=True)
class HTTPRequest:
    """An HTTP/1.x request as :class:`HTTPHead` frames it."""

    method: str
    target: str
    version: str  # "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    head: bytes  # the raw head, request line to the blank line included
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called *name* (case-insensitive)."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


# RFC 9110 tokens (method, header name); bytes a target or a header value
# must not hold (one regex search instead of a Python test per byte)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def parse_request_head(head: bytes) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """(method, target, version, headers) of an HTTP/1.x request head, or BadMessage."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadMessage(f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise BadMessage(f"malformed method {method[:40]!r}")
    if not target or _BAD_TARGET.search(target) is not None:
        raise BadMessage(f"malformed request target {target[:80]!r}")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadMessage(f"unsupported HTTP version {version[:20]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise BadMessage(f"malformed header line {line[:80]!r}")
        if _BAD_VALUE.search(value) is not None:
            raise BadMessage(f"control character in header {name[:40]!r}")
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), \
        tuple(headers)


def body_length(headers: tuple[tuple[str, str], ...]) -> int | None:
    """The Content-Length of a request (0 without one); None for a chunked body.

    Raises BadMessage for a malformed or conflicting length (request smuggling).
    """
    lengths = [v for k, v in headers if k == "content-length"]
    chunked = any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
    if chunked:
        if lengths:
            raise BadMessage("both Transfer-Encoding: chunked and Content-Length")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) > 1 or not lengths[0].isdigit() or not lengths[0].isascii():
        raise BadMessage(f"malformed Content-Length {lengths!r}")
    return int(lengths[0])


class HTTPHead(_Framing):
    """HTTP/1.x requests: each message is an :class:`HTTPRequest`.

    The head (request line and headers, up to the blank line) may be at
    most *max_len* bytes: more is a :class:`FrameTooLarge` with
    ``what="head"`` (a server answers 431).  A body announced by
    Content-Length is collected into ``request.body`` up to *max_body*
    bytes; a larger one is a :class:`FrameTooLarge` with ``what="body"``
    (413), a chunked body a :class:`BadMessage` (this framer is for servers
    of GET/HEAD-style traffic).  A malformed head is a :class:`BadMessage`
    (400).  Empty lines before a request line are skipped (RFC 9112 2.2).
    """

    def __init__(self, max_len: int = DEFAULT_HEAD_MAX, *, max_body: int = 0) -> None:
        self.max_len = _check_limit(max_len, "max_len")
        self.max_body = _check_max_body(max_body)
        self._buf = bytearray()
        self._head: tuple[Any, ...] | None = None  # parsed head waiting for its body
        self._need = 0

    def _feed(self, data: bytes, out: list[Any]) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._head is None:
                while buf[:2] == b"\r\n":
                    del buf[:2]
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self.max_len:
                        raise FrameTooLarge(
                            f"request head over max_len={self.max_len} bytes",
                            limit=self.max_len, size=len(buf), what="head",
                        )
                    return
                if end + 4 > self.max_len:
                    raise FrameTooLarge(
                        f"request head of {end + 4} bytes is over max_len={self.max_len}",
                        limit=self.max_len, size=end + 4, what="head",
                    )
                head = bytes(buf[:end + 4])
                method, target, version, headers = parse_request_head(head[:-4])
                n = body_length(headers)
                if n is None:
                    raise BadMessage("chunked request bodies are not supported by HTTPHead")
                if n > self.max_body:
                    raise FrameTooLarge(
                        f"request body of {n} bytes is over max_body={self.max_body}",
                        limit=self.max_body, size=n, what="body",
                    )
                del buf[:end + 4]
                self._head = (method, target, version, headers, head)
                self._need = n
            if len(buf) < self._need:
                return
            method, target, version, headers, head = self._head
            body = bytes(buf[:self._need])
            del buf[:self._need]
            self._head = None
            out.append(HTTPRequest(method, target, version, headers, head, body))

    def eof(self) -> list[Any]:
        rest = bytes(self._buf)
        self._buf.clear()
        partial = self._head is not None
        self._head = None
        if rest.strip(b"\r\n") or partial:
            raise IncompleteMessage("stream ended inside an HTTP request", rest)
        return []

    def buffered(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"HTTPHead(max_len={self.max_len}, max_body={self.max_body})"
