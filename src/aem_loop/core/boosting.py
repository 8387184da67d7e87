"""Priority inheritance through locks: the scheduler's part.

A task that holds up more urgent work (e.g. it owns a lock a HIGH task
waits for) runs its steps at that work's level while it does: ``boost``
raises it for one source (and moves its already queued steps up),
``unboost`` drops that source again; with several sources the highest
wins.  ``boosts`` (task -> level) is what dispatch consults: a woken step,
a due timer of a boosted task runs at least at its boost.  The locks of
:mod:`aem_loop.locks` and classified connections call these, as methods
of the scheduler (its class binds them; ``self`` is the scheduler).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["boost", "boosted", "unboost"]


def boosted(self: Scheduler, handle: Any, level: int) -> int:
    """The level *handle* runs at: *level*, or its task's boost if higher."""
    task = getattr(handle._callback, "__self__", None)
    b = self.boosts.get(task, -1)
    if b > level:
        self.inherited += 1
        return b
    return level


def boost(self: Scheduler, task: Any, source: Any, level: int) -> None:
    """Run *task*'s steps at least at *level* while *source* holds it up."""
    srcs = self._boost_sources.setdefault(task, {})
    srcs[source] = level
    self.boosts[task] = top = max(srcs.values())
    self.flat_bit = -1  # a boosted step may run above its level
    _requeue(self, task, top)


def _requeue(self: Scheduler, task: Any, level: int) -> None:
    """Move *task*'s already queued steps up to *level* (O(queued); boosts are rare)."""
    for lv in list(self.levels_below(level)):
        q = self._levels[lv]
        mine = [h for h in q if getattr(h._callback, "__self__", None) is task]
        if not mine:
            continue
        for h in mine:
            q.remove(h)
            if self._probe[lv] is h:
                self._end_probe(lv)
            self._levels[level].append(h)
            self._bits |= 1 << level
            self.inherited += 1
        if not q:
            self._bits &= ~(1 << lv)


def unboost(self: Scheduler, task: Any, source: Any) -> None:
    """*source* no longer holds *task* up (its other boosts stay)."""
    srcs = self._boost_sources.get(task)
    if not srcs or source not in srcs:
        return
    del srcs[source]
    if srcs:
        self.boosts[task] = max(srcs.values())
    else:
        del self._boost_sources[task]
        del self.boosts[task]
