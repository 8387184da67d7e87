"""AEMhttpd's side of the file system: resolving a request target inside
the root (nothing outside it is ever served), the small-file cache, and the
headers that describe a file."""

from __future__ import annotations

import email.utils
import mimetypes
import os
import stat
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from ..events.framers import HTTPRequest

CACHE_FILE_MAX = 256 * 1024  # files up to this size are kept in memory ...
CACHE_TOTAL_MAX = 64 * 1024 * 1024  # ... up to this much in all


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


class Clock:
    """The Date header, formatted once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def date(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self.second:
            self.second = sec
            self.value = http_date(now)
        return self.value


class FileBody:
    """The rest of a large file, sent with os.sendfile."""

    __slots__ = ("fd", "offset", "remaining")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.offset = 0
        self.remaining = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Cached:
    __slots__ = ("body", "ctype", "key", "modified")

    def __init__(self, key: tuple[int, int, int], body: bytes, ctype: str, modified: str) -> None:
        self.key = key
        self.body = body
        self.ctype = ctype
        self.modified = modified


def content_type(path: str) -> str:
    ctype, enc = mimetypes.guess_type(path, strict=False)
    if ctype is None or enc is not None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        return ctype + "; charset=utf-8"
    return ctype


def not_modified(req: HTTPRequest, mtime: float) -> bool:
    ims = req.header("if-modified-since")
    if ims is None:
        return False
    try:
        when = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False  # an unparsable date is ignored (RFC 9110 13.1.3)
    if when.tzinfo is None:
        return False
    return int(mtime) <= when.timestamp()


class StaticFiles:
    """The files under *root* (a real path) as requests name them."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._cache: dict[str, Cached] = {}
        self._cache_bytes = 0
        self._lookups: dict[str, tuple[int, str, Any]] = {}
        self._lookups_second = -1

    def lookup(self, target: str) -> tuple[int, str, Any]:
        """(status, real path, stat) of a request target; what the file
        system said is reused for one second (a file that changes is seen
        within a second, as with nginx's open_file_cache_valid 1s)."""
        sec = int(time.monotonic())
        if sec != self._lookups_second:
            self._lookups.clear()
            self._lookups_second = sec
        hit = self._lookups.get(target)
        if hit is None:
            hit = self._resolve(target)
            if len(self._lookups) < 4096:
                self._lookups[target] = hit
        return hit

    def _resolve(self, target: str) -> tuple[int, str, Any]:
        """(status, real path, stat): 200, the file and its stat, or
        400/403/404, '' and None.  A directory serves its index.html."""
        if not target.startswith("/"):
            if target.startswith(("http://", "https://")):  # absolute-form
                rest = target.split("://", 1)[1]
                slash = rest.find("/")
                target = rest[slash:] if slash >= 0 else "/"
            else:
                return 400, "", None
        path = target.split("?", 1)[0].split("#", 1)[0]
        raw = unquote_to_bytes(path)
        if b"\0" in raw:
            return 403, "", None
        segments = [s for s in raw.split(b"/") if s not in (b"", b".")]
        if b".." in segments:
            return 403, "", None
        full = os.path.join(self.root, *(os.fsdecode(s) for s in segments))
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root + os.sep):
            return 403, "", None  # a symlink leading out of the root
        try:
            st = os.stat(real)
            if stat.S_ISDIR(st.st_mode):
                real = os.path.join(real, "index.html")
                st = os.stat(real)
        except OSError:
            return 404, "", None
        if not stat.S_ISREG(st.st_mode):
            return 404, "", None
        return 200, real, st

    def cached(self, real: str, st: os.stat_result) -> Cached | None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(real)
        if hit is not None and hit.key == key:
            return hit
        if st.st_size > CACHE_FILE_MAX:
            return None
        try:
            with open(real, "rb") as f:
                body = f.read(st.st_size + 1)
        except OSError:
            return None
        if len(body) != st.st_size:
            return None  # changing under us: not cached
        if hit is not None:
            self._cache_bytes -= len(hit.body)
            del self._cache[real]
        while self._cache and self._cache_bytes + len(body) > CACHE_TOTAL_MAX:
            old = self._cache.pop(next(iter(self._cache)))
            self._cache_bytes -= len(old.body)
        entry = Cached(key, body, content_type(real), http_date(st.st_mtime))
        self._cache[real] = entry
        self._cache_bytes += len(body)
        return entry
