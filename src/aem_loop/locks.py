"""Synchronisation with priority inheritance."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from .core.priority import current_priority

__all__ = ["Lock"]


def _scheduler() -> Any:
    return getattr(asyncio.get_running_loop(), "_aem", None)


def _effective_priority(sched: Any) -> int:
    # While the core dispatches, the running step's level includes
    # inheritance and boosts; otherwise the context says.
    if sched is not None and sched.current >= 0:
        return int(sched.current)
    return current_priority()


class Lock(asyncio.Lock):
    """An ``asyncio.Lock`` whose holder is boosted to its most urgent waiter.

    On an aem loop, while tasks wait for the lock, the task holding it runs
    its steps at least at the priority of the most urgent waiter, so a
    low-priority holder cannot keep an urgent waiter behind medium-priority
    work (priority inversion).  On other loops it is a plain asyncio.Lock.
    The boost applies from the holder's next step and ends at release.
    """

    def __init__(self) -> None:
        super().__init__()
        self._aem_owner: asyncio.Task[Any] | None = None
        self._aem_waiting: list[int] = []

    async def acquire(self) -> Literal[True]:
        sched = _scheduler()
        if not self.locked():
            await super().acquire()
            self._aem_owner = asyncio.current_task()
            return True
        level = _effective_priority(sched)
        self._aem_waiting.append(level)
        self._aem_boost(sched)
        try:
            await super().acquire()
        finally:
            self._aem_waiting.remove(level)
            self._aem_boost(sched)
        self._aem_owner = asyncio.current_task()
        self._aem_boost(sched)
        return True

    def release(self) -> None:
        owner = self._aem_owner
        self._aem_owner = None
        sched = _scheduler()
        if sched is not None and owner is not None:
            sched.unboost(owner, self)
        super().release()

    def _aem_boost(self, sched: Any) -> None:
        owner = self._aem_owner
        if sched is None or owner is None:
            return
        if self._aem_waiting:
            sched.boost(owner, self, max(self._aem_waiting))
        else:
            sched.unboost(owner, self)
