"""The handle the core queues: asyncio's Handle with one more slot.

``_aem_q`` is True while a reader's or writer's handle waits in the ready
queue: a poll that finds the fd ready again (level-triggered, e.g. after a
time slice) does not queue it twice (:meth:`Scheduler.push_io`).  The
dispatch loop clears it for every handle it pops, which is why every handle
the core queues has the slot: this class, or :class:`AEMTimerHandle`.  A
flag on the handle costs a store per callback; the set of queued handles it
replaces cost three hashed set operations per readiness (15,638 -> 15,209
instructions per 1 KiB echo round trip (callgrind), asyncio 15,555).

Also here: how the dispatch loop reports a callback's exception, and
which future callbacks are wakeups (inheritance).
"""

from __future__ import annotations

import asyncio
import inspect
from asyncio import events, format_helpers
from typing import Any

__all__ = ["URGENT_IO", "AEMHandle", "is_wakeup", "report_callback_error"]


class AEMHandle(events.Handle):
    """An :class:`asyncio.Handle` the core can mark as queued.  Its repr is
    asyncio's (``<Handle ...>``)."""

    # Set by whoever queues it as a reader or writer (push_io reads it), or
    # written first by the dispatch loop; no __init__ of its own, which in
    # debug mode would add its frame to the handle's source traceback.
    # _aem_level: a reader's or writer's priority, taken from its context
    # when it is registered (the level the backend counts it at).
    __slots__ = ("_aem_level", "_aem_q")

    def _repr_info(self) -> list[str]:
        info: list[str] = super()._repr_info()  # type: ignore[misc]
        info[0] = "Handle"
        return info


# Handle._run formats the callback with the loop's debug flag on 3.13+ only.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def report_callback_error(handle: Any, exc: BaseException) -> None:
    """What ``Handle._run`` does when the callback raises: the dispatch loop
    calls the callback itself (one Python frame less per callback than the
    handle's ``_run`` method) and reports through this, to the same effect."""
    if _FORMAT_TAKES_DEBUG:
        cb = format_helpers._format_callback_source(
            handle._callback, handle._args, debug=handle._loop.get_debug()  # type: ignore[call-arg]
        )
    else:
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


# Task classes (C and pure Python); their own steps are not wakeups.
_TASK_TYPES = tuple({asyncio.Task, asyncio.tasks._PyTask})  # type: ignore[attr-defined]


def is_wakeup(callback: Any) -> bool:
    """False for a task rescheduling its own next step (a bare yield, e.g.
    ``sleep(0)``), which keeps the task's level; True for a task woken by a
    future (``task_wakeup``) and for any other future callback."""
    if isinstance(getattr(callback, "__self__", None), _TASK_TYPES):
        return "wakeup" in (getattr(callback, "__name__", None) or "")
    return True


class _UrgentIO:
    """What a signal handler puts in a scheduler's inbox when urgent I/O is
    ready (backends.tiers): not a handle, the inbox's reader knows it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "URGENT_IO"


URGENT_IO = _UrgentIO()
