"""aem_loop: an asyncio event loop with AEM semantics.

Priorities (0..99, higher first, FIFO within a level) with time-sliced
dispatch, aging and inheritance, on two I/O backends ("selector", "uvloop").
See README.md and docs/.
"""

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
from .locks import Lock
from .vmprotocol import BlockProtocol
from .vmtable import Block, VMTable, VMTableError, VMTableExhausted, VMTableStatistics

__version__ = "0.1.0"

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "Block",
    "BlockProtocol",
    "BrokenCapsulePool",
    "CapsuleDied",
    "CapsuleError",
    "CapsulePool",
    "ChildProcess",
    "ClonerEvent",
    "EventFlags",
    "EventLoopPolicy",
    "LatencySummary",
    "Lock",
    "LoopStatistics",
    "PeriodicJob",
    "PeriodicStatistics",
    "Priority",
    "Tick",
    "Ticker",
    "VMTable",
    "VMTableError",
    "VMTableExhausted",
    "VMTableStatistics",
    "__version__",
    "cloner",
    "create_task",
    "current_events",
    "current_priority",
    "effective_priority",
    "every",
    "install",
    "loop_factory",
    "new_event_loop",
    "priority",
    "run",
    "set_priority",
]
