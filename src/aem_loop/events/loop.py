"""What both backends' loops get from the events package: ``loop.add_event``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..capsules.cloner import EventFlags
from .event import Event

_NO_FLAGS = EventFlags(0)

__all__ = ["EventsLoopMixin"]


class EventsLoopMixin:
    """``loop.add_event(...)``, ``loop.events()``; events end with the loop."""

    @property
    def _aem_events(self) -> dict[int, Event]:
        d: dict[int, Event] | None = self.__dict__.get("_aem_events_d")
        if d is None:
            d = self.__dict__["_aem_events_d"] = {}
        return d

    @property
    def _aem_jobs(self) -> dict[Any, Any]:
        d: dict[Any, Any] | None = self.__dict__.get("_aem_jobs_d")
        if d is None:
            d = self.__dict__["_aem_jobs_d"] = {}
        return d

    def add_event(
        self,
        source: Any,
        handler: Callable[..., Any],
        *,
        priority: int | None = None,
        flags: EventFlags = _NO_FLAGS,
        constructor: Callable[[], Any] | None = None,
        destructor: Callable[[Any], Any] | None = None,
        pool: Any = None,
        name: str | None = None,
    ) -> Event:
        """Register *handler* for *source*'s occurrences (see :mod:`aem_loop.events`).

        The handler runs at *priority* (default: the current priority) with
        one :class:`~aem_loop.Activation` holding everything that occurred
        since its last run.  *flags*: ``EventFlags.ONESHOT`` (one
        activation), ``FORK``/``CAPSULE`` (the handler runs in another
        process; ``pool=`` a CapsulePool for CAPSULE), ``NOCLDWAIT``,
        ``KEEPALIVE`` as for cloner events.
        """
        self._aem_check_open()  # type: ignore[attr-defined]
        return Event(self, source, handler, priority=priority, flags=flags,
                     constructor=constructor, destructor=destructor, pool=pool, name=name)

    def events(self) -> list[Event]:
        """The events registered on this loop, oldest first."""
        return list(self._aem_events.values())

    def close(self) -> None:
        if not self.is_running():  # type: ignore[attr-defined]
            for ev in list(self._aem_events.values()):
                ev.unregister()
        super().close()  # type: ignore[misc]
