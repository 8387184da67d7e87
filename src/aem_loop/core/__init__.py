"""The scheduling core.  Imports no I/O code (tests/test_layering.py checks it)."""

from .priority import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Priority,
    check_priority,
    current_priority,
    priority,
    set_priority,
)
from .readyqueue import ReadyQueue
from .scheduler import DEFAULT_AGING, DEFAULT_TIME_SLICE, Scheduler
from .stats import LatencySummary, LoopStatistics

__all__ = [
    "DEFAULT_AGING",
    "DEFAULT_TIME_SLICE",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "LatencySummary",
    "LoopStatistics",
    "Priority",
    "ReadyQueue",
    "Scheduler",
    "check_priority",
    "current_priority",
    "priority",
    "set_priority",
]
