"""Events and reactive jobs: AEM's registration API (see docs/events.md).

``loop.add_event(source, handler, *, priority=None, flags=..., constructor=None,
destructor=None)`` registers *handler* for a source's occurrences; the
source's job runs at job level, checks and merges what occurred, and
activates the handler at the event's priority with the data.
"""

from . import framers
from .classify import ClassifiedProtocol, classify
from .event import Activation, Event, EventStatistics, current_event
from .sources import (
    ChildExit,
    ChildStatus,
    Periodic,
    Readable,
    Signal,
    SocketData,
    UserEvent,
    Writable,
)

__all__ = [
    "Activation",
    "ChildExit",
    "ChildStatus",
    "ClassifiedProtocol",
    "Event",
    "EventStatistics",
    "Periodic",
    "Readable",
    "Signal",
    "SocketData",
    "UserEvent",
    "Writable",
    "classify",
    "current_event",
    "framers",
]
