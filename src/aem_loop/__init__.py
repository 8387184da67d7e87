"""aem_loop: an asyncio event loop with AEM semantics.

Priorities (0..99, higher first, FIFO within a level) with time-sliced
dispatch, aging and inheritance, on two I/O backends ("selector", "uvloop").
See README.md and docs/.
"""

from . import framers
from .api import (
    EventLoopPolicy,
    cloner,
    create_task,
    every,
    install,
    loop_factory,
    new_event_loop,
    run,
)
from .capsules import (
    BrokenCapsulePool,
    CapsuleDied,
    CapsuleError,
    CapsulePool,
    ChildProcess,
    ClonerEvent,
    EventFlags,
    current_events,
)
from .core.periodic import PeriodicJob, PeriodicStatistics, Tick, Ticker
from .core.priority import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Priority,
    current_priority,
    effective_priority,
    priority,
    set_priority,
)
from .core.stats import LatencySummary, LoopStatistics
from .events import (
    Activation,
    ChildExit,
    ChildStatus,
    Event,
    EventStatistics,
    Periodic,
    Readable,
    Signal,
    SocketData,
    UserEvent,
    Writable,
    classify,
    current_event,
)
from .locks import Lock
from .vmprotocol import BlockProtocol
from .vmtable import Block, VMTable, VMTableError, VMTableExhausted, VMTableStatistics

__version__ = "0.1.0"

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "Activation",
    "Block",
    "BlockProtocol",
    "BrokenCapsulePool",
    "CapsuleDied",
    "CapsuleError",
    "CapsulePool",
    "ChildExit",
    "ChildProcess",
    "ChildStatus",
    "ClonerEvent",
    "Event",
    "EventFlags",
    "EventLoopPolicy",
    "EventStatistics",
    "LatencySummary",
    "Lock",
    "LoopStatistics",
    "Periodic",
    "PeriodicJob",
    "PeriodicStatistics",
    "Priority",
    "Readable",
    "Signal",
    "SocketData",
    "Tick",
    "Ticker",
    "UserEvent",
    "VMTable",
    "VMTableError",
    "VMTableExhausted",
    "VMTableStatistics",
    "Writable",
    "__version__",
    "classify",
    "cloner",
    "create_task",
    "current_event",
    "current_events",
    "current_priority",
    "effective_priority",
    "every",
    "framers",
    "install",
    "loop_factory",
    "new_event_loop",
    "priority",
    "run",
    "set_priority",
]
