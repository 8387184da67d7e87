"""The handle the core queues: asyncio's Handle with one more slot.

``_aem_q`` is True while a reader's or writer's handle waits in the ready
queue: a poll that finds the fd ready again (level-triggered, e.g. after a
time slice) does not queue it twice (:meth:`Scheduler.push_io`).  The
dispatch loop clears it for every handle it pops, which is why every handle
the core queues has the slot: this class, or :class:`AEMTimerHandle`.  A
flag on the handle costs a store per callback; the set of queued handles it
replaces cost three hashed set operations per readiness (15,638 -> 15,209
instructions per 1 KiB echo round trip (callgrind), asyncio 15,555).
"""

from __future__ import annotations

from asyncio import events

__all__ = ["AEMHandle"]


class AEMHandle(events.Handle):
    """An :class:`asyncio.Handle` the core can mark as queued.  Its repr is
    asyncio's (``<Handle ...>``)."""

    # Set by whoever queues it as a reader or writer (push_io reads it), or
    # written first by the dispatch loop; no __init__ of its own, which in
    # debug mode would add its frame to the handle's source traceback.
    __slots__ = ("_aem_q",)

    def _repr_info(self) -> list[str]:
        info: list[str] = super()._repr_info()  # type: ignore[misc]
        info[0] = "Handle"
        return info
