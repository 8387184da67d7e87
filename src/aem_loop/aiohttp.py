"""aiohttp integration: priority decided per request from its route.

::

    from aiohttp import web
    import aem_loop, aem_loop.aiohttp

    app = web.Application()
    ...
    aem_loop.aiohttp.route_priorities(app, {"/health": aem_loop.Priority.HIGH,
                                            "/admin/": aem_loop.Priority.HIGH})
    web.run_app(app, loop=aem_loop.new_event_loop())

One port, shared keep-alive connections: each request is classified by
its path (longest prefix wins) as soon as its head is read, at job level,
before the backlog of other requests runs.  Its ``data_received`` runs at
the route's priority, and so do the request's handler task and the
response it writes.  Requests of no listed route keep the connection's
priority.  On a loop that is not an aem loop the app behaves as without it.

Only the aiohttp user imports this module.
"""

from __future__ import annotations

import contextvars
from asyncio import events as _aio_events
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .core.priority import DEFAULT_PRIORITY, PRIORITY_VAR, check_priority
from .events.classify import ClassifiedProtocol, _Classifier

__all__ = ["RouteTable", "route_priorities"]

# Paths and request lines whose level a RouteTable keeps, at most.
_SEEN_MAX = 1024

def _keep(seen: dict[Any, int | None], key: Any, lv: int | None) -> int | None:
    """Remember *lv* for *key* in *seen* (emptied when full); return it."""
    if len(seen) >= _SEEN_MAX:
        seen.clear()
    seen[key] = lv
    return lv


# The connection's own level, kept in the context of aiohttp's per-connection
# request loop the first time one of its requests is classified.
_BASE: contextvars.ContextVar[int] = contextvars.ContextVar("aem_loop.aiohttp.base")


class RouteTable:
    """Path prefixes to priorities; the longest matching prefix wins."""

    def __init__(self, routes: Mapping[str, int]) -> None:
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a mapping of path prefix to priority, not {routes!r}")
        table = []
        for prefix, prio in routes.items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ValueError(f"route prefix must be a str starting with '/', got {prefix!r}")
            table.append((prefix, check_priority(prio, f"priority of route {prefix!r}")))
        table.sort(key=lambda item: len(item[0]), reverse=True)
        self._table = tuple(table)
        self._btable = tuple((p.encode("latin-1"), lv) for p, lv in table)
        # What each path and request line seen last got: a keep-alive
        # client asks for the same few again and again.  Bounded: emptied
        # when full (the keys come from the network).
        self._paths: dict[str, int | None] = {}
        self._lines: dict[bytes, int | None] = {}

    def level(self, path: str) -> int | None:
        """The level of the route *path* falls under (None: no route)."""
        try:
            return self._paths[path]
        except KeyError:
            pass
        lv: int | None = None
        for prefix, p in self._table:
            if path.startswith(prefix):
                lv = p
                break
        return _keep(self._paths, path, lv)

    def classify_head(self, head: bytes) -> int | None:
        """The level of a raw HTTP/1.x request head (its request line's path)."""
        i = head.find(b"\r\n")
        line = head if i < 0 else head[:i]
        try:
            return self._lines[line]
        except KeyError:
            pass
        return _keep(self._lines, line, self._line_level(line))

    def _line_level(self, line: bytes) -> int | None:
        parts = line.split(b" ")
        if len(parts) != 3:
            return None
        target = parts[1]
        if not target.startswith(b"/"):  # absolute-form: scheme://host/path
            i = target.find(b"://")
            if i < 0:
                return None
            j = target.find(b"/", i + 3)
            target = target[j:] if j >= 0 else b"/"
        path = target.split(b"?", 1)[0]
        for prefix, lv in self._btable:
            if path.startswith(prefix):
                return lv
        return None

    def __repr__(self) -> str:
        return f"RouteTable({dict(self._table)!r})"


class _ClassifiedServer:
    """aiohttp's ``web.Server`` (the protocol factory), whose protocols are
    wrapped to classify each request on an aem loop."""

    _aem_classified = True  # the uvloop backend wraps such a factory no further

    def __init__(self, server: Any, classifier: _Classifier) -> None:
        self._aem_server = server
        self._aem_classifier = classifier

    def __call__(self) -> Any:
        proto = self._aem_server()
        loop = _aio_events._get_running_loop()
        if getattr(loop, "_aem", None) is None:
            return proto  # not an aem loop: stock behaviour
        return ClassifiedProtocol(proto, self._aem_classifier, loop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aem_server, name)

    def __repr__(self) -> str:
        return f"<aem classified {self._aem_server!r}>"


def route_priorities(app: web.Application, routes: Mapping[str, int]) -> RouteTable:
    """Serve *app*'s requests at the priority of their path's route.

    *routes* maps path prefixes to priorities (0..99).  Call it before the
    app runs (``web.run_app`` or ``AppRunner.setup()``).  Returns the table.
    """
    if not isinstance(app, web.Application):
        raise TypeError(f"app must be an aiohttp.web.Application, not {app!r}")
    if app.frozen:
        raise RuntimeError("route_priorities() must be called before the app runs (it is frozen)")
    if getattr(app, "_aem_routes", None) is not None:
        raise RuntimeError("route_priorities() was already called for this app")
    table = RouteTable(routes)
    classifier = _Classifier(table.classify_head, "http")
    make_handler = app._make_handler
    make_request = app._make_request

    def _make_handler(*, loop: Any = None, **kwargs: Any) -> Any:
        return _ClassifiedServer(make_handler(loop=loop, **kwargs), classifier)

    def _make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any,
                      _cls: type[web.Request] = web.Request) -> web.Request:
        # Runs in the connection's request loop, just before aiohttp creates
        # the request's handler task: the task copies the level set here.
        base = _BASE.get(None)
        if base is None:
            base = PRIORITY_VAR.get(DEFAULT_PRIORITY)
            _BASE.set(base)
        level = table.level(message.path)
        PRIORITY_VAR.set(base if level is None else level)
        return make_request(message, payload, protocol, writer, task, _cls=_cls)  # type: ignore[no-any-return]

    # Application warns about new attributes in aiohttp's debug mode only;
    # these replace two of its methods on this instance.
    object.__setattr__(app, "_make_handler", _make_handler)
    object.__setattr__(app, "_make_request", _make_request)
    object.__setattr__(app, "_aem_routes", table)
    return table
