"""Capsules: pre-started worker processes (AEM's capsule pool) and cloner events."""

from ._wire import SERVED_EVENTS
from .cloner import ChildProcess, ClonerEvent, EventFlags, EventInfo
from .errors import BrokenCapsulePool, CapsuleDied, CapsuleError, RemoteTraceback
from .pool import CapsuleFuture, CapsulePool
from .zygote import prestart


def current_events() -> list[object]:
    """In a capsule or forked child: the cloner events this process has served."""
    return list(SERVED_EVENTS)


__all__ = [
    "BrokenCapsulePool",
    "CapsuleDied",
    "CapsuleError",
    "CapsuleFuture",
    "CapsulePool",
    "ChildProcess",
    "ClonerEvent",
    "EventFlags",
    "EventInfo",
    "RemoteTraceback",
    "current_events",
    "prestart",
]
