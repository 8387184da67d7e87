"""Pending timers of the core: a hashed timing wheel with an occupancy bitmap.

Why not asyncio's heap: a server sets a timeout per request and cancels most
of them.  In a heap, insert is O(log n) Python-level comparisons and cancel
only marks the handle; the garbage stays until the heap is rebuilt, an O(n)
pause (188 ms for a million cancelled timers here).  This wheel makes both
O(1) and a cancelled timer leaves the structure at once.

Layout (Varghese & Lauck's hashed wheel, with Linux's idea of finding the
next occupied slot through a bitmap instead of ticking through empty ones):

- Time is cut into ticks of 1 ms.  A *bucket* holds the timers whose firing
  time falls in one tick: a dict from the timer's sequence number to the
  handle, so removal is ``del bucket[key]`` and insertion order is kept.
- The *ring* holds the buckets of the current and the next *epoch* (2**15
  ticks, about 33 s each), indexed by ``tick & 0xFFFF``.  An occupancy bitmap
  (1024 words of 64 bits plus one summary word of 1024 bits) finds the next
  non-empty tick in three steps, however far it is.
- Timers beyond the ring go to a *far* bucket per epoch (a dict of dicts,
  with a heap of epoch numbers to find the nearest).  When the wheel enters
  epoch e, far epoch e+1 moves into the ring, a bounded chunk per call, so
  that no single call pauses the loop; at least one epoch (33 s) is left for
  it, and it is finished at once only when it is needed (the loop sleeps
  until it, or it is about to become due).

Guarantees (asyncio's): a timer never fires before its time (the bucket is
only a hint: the exact time is compared); timers due at the same time fire
in the order they were scheduled (a due batch is sorted by (time, sequence)).

Soft-timer slack: a timer created with slack ``s`` fires at the first point of
a grid of step ``g`` (the largest power-of-two number of milliseconds not
above ``s``) at or after its time: never early, at most ``s`` late, and
timers with nearby deadlines share one wakeup.  ``wakeups_saved`` counts
the wakeups that exact deadlines would have taken in addition.
"""

from __future__ import annotations

import heapq
import math
from asyncio import events
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

__all__ = ["TICKS_PER_SECOND", "AEMTimerHandle", "TimerWheel", "slack_fire_time"]

TICKS_PER_SECOND = 1000.0
_EPOCH_BITS = 15  # ticks per epoch: 32768 (32.8 s)
_RING_BITS = _EPOCH_BITS + 1  # the ring holds two epochs
_RING_MASK = (1 << _RING_BITS) - 1
_NWORDS = (1 << _RING_BITS) >> 6  # 64-bit occupancy words
# Far timers moved into the ring per call while an epoch migrates.
_MIGRATE_CHUNK = 512
# While an epoch migrates, an idle loop wakes up this often to move a chunk.
_MIGRATE_WAKEUP = 0.010

_fire_key = attrgetter("_aem_fire", "_aem_key")


class AEMTimerHandle(events.TimerHandle):
    """The loop's timer handle: an :class:`asyncio.TimerHandle` that knows its bucket.

    ``cancel()`` removes it from the wheel at once (no cancelled garbage).
    Equality and hashing stay asyncio's.
    """

    __slots__ = ("_aem_bucket", "_aem_fire", "_aem_key", "_aem_tick", "_aem_wheel")
    _aem_bucket: dict[int, AEMTimerHandle] | None
    _aem_fire: float  # when it fires: its time, or later by its slack
    _aem_key: int  # sequence number: same-time order, key in its bucket
    _aem_tick: int  # its bucket's tick; ~tick while in a far bucket
    _aem_wheel: TimerWheel
    if TYPE_CHECKING:  # asyncio's private slots, not in typeshed
        _when: float
        _cancelled: bool
        _scheduled: bool
        _source_traceback: Any
        _repr: str | None
        _callback: Any
        _args: Any

    def cancel(self) -> None:
        # Handle.cancel(), inlined, plus leaving the wheel; no call into the
        # loop (TimerHandle.cancel's _timer_handle_cancelled is not needed).
        if not self._cancelled:
            self._cancelled = True
            b = self._aem_bucket
            if b is not None:
                del b[self._aem_key]
                self._aem_bucket = None
                wheel = self._aem_wheel
                wheel.n -= 1
                if not b:
                    wheel._emptied(self._aem_tick, b)
            self._scheduled = False
            if self._source_traceback is not None:  # made in debug mode
                self._repr = repr(self)
            self._callback = None
            self._args = None


def slack_fire_time(when: float, slack: float) -> float:
    """When a timer due at *when* with *slack* seconds of slack fires."""
    if slack < 0.001:
        return when
    g = float(1 << int(math.log2(slack * TICKS_PER_SECOND))) / TICKS_PER_SECOND
    fire = math.ceil(when / g) * g
    return fire if fire >= when else when


class TimerWheel:
    """The core's pending timers (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_cur",
        "_far",
        "_far_epochs",
        "_limit",
        "_mig_epoch",
        "_migrating",
        "_seq",
        "_slots",
        "_summary",
        "_words",
        "fired",
        "n",
        "wakeups",
        "wakeups_saved",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.n = 0  # live pending timers
        self._seq = 0
        self._slots: dict[int, dict[int, AEMTimerHandle]] = {}
        self._words = [0] * _NWORDS
        self._summary = 0
        # Every ring bucket's tick is >= _cur; ticks below it were processed.
        self._cur = int(clock() * TICKS_PER_SECOND)
        # Ring ticks are < _limit (end of the epoch after _cur's).
        self._limit = ((self._cur >> _EPOCH_BITS) + 2) << _EPOCH_BITS
        self._far: dict[int, dict[int, AEMTimerHandle]] = {}
        self._far_epochs: list[int] = []  # heap; may hold epochs emptied since
        self._migrating: list[AEMTimerHandle] | None = None
        self._mig_epoch = -1
        self.fired = 0
        self.wakeups = 0  # pop_due calls that fired at least one timer
        self.wakeups_saved = 0

    def __len__(self) -> int:
        return self.n

    # -- insert / remove -------------------------------------------------------

    def push(self, h: AEMTimerHandle, fire: float) -> None:
        """Insert *h* to fire at *fire* (>= its ``_when``)."""
        self._seq = key = self._seq + 1
        h._aem_key = key
        h._aem_fire = fire
        h._aem_wheel = self
        self.n += 1
        tick = int(fire * TICKS_PER_SECOND)
        if tick < self._cur:
            tick = self._cur
        if tick < self._limit:
            # (inlined _ring_insert: this is every call_later's path)
            h._aem_tick = tick
            b = self._slots.get(tick)
            if b is None:
                self._slots[tick] = b = {}
                pos = tick & _RING_MASK
                i = pos >> 6
                w = self._words[i]
                if not w:
                    self._summary |= 1 << i
                self._words[i] = w | (1 << (pos & 63))
            b[key] = h
            h._aem_bucket = b
        else:
            epoch = tick >> _EPOCH_BITS
            h._aem_tick = ~tick  # negative: in a far bucket
            b = self._far.get(epoch)
            if b is None:
                self._far[epoch] = b = {}
                heapq.heappush(self._far_epochs, epoch)
            b[key] = h
            h._aem_bucket = b

    def _ring_insert(self, h: AEMTimerHandle, tick: int) -> None:
        if tick < self._cur:
            tick = self._cur
        h._aem_tick = tick
        b = self._slots.get(tick)
        if b is None:
            self._slots[tick] = b = {}
            pos = tick & _RING_MASK
            i = pos >> 6
            w = self._words[i]
            if not w:
                self._summary |= 1 << i
            self._words[i] = w | (1 << (pos & 63))
        b[h._aem_key] = h
        h._aem_bucket = b

    def _emptied(self, tick: int, b: dict[int, AEMTimerHandle]) -> None:
        """A cancel left bucket *b* (at *tick*) empty: drop it."""
        if tick >= 0:
            self._drop_slot(tick)
        else:
            epoch = (~tick) >> _EPOCH_BITS
            if self._far.get(epoch) is b:
                del self._far[epoch]  # its number leaves the heap lazily

    def _drop_slot(self, tick: int) -> None:
        del self._slots[tick]
        pos = tick & _RING_MASK
        i = pos >> 6
        w = self._words[i] & ~(1 << (pos & 63))
        self._words[i] = w
        if not w:
            self._summary &= ~(1 << i)

    # -- finding the next timer ---------------------------------------------------

    def _next_tick(self) -> int | None:
        """The smallest occupied ring tick (all are >= _cur), or None."""
        summary = self._summary
        if not summary:
            return None
        cur = self._cur
        p = cur & _RING_MASK
        i = p >> 6
        w = self._words[i] >> (p & 63)
        if w:
            return cur + ((w & -w).bit_length() - 1)
        s = summary >> (i + 1)
        # else wrap around (word i's low bits are ticks a ring ahead)
        j = i + (s & -s).bit_length() if s else (summary & -summary).bit_length() - 1
        w = self._words[j]
        pos = (j << 6) | ((w & -w).bit_length() - 1)
        return cur + ((pos - p) & _RING_MASK)

    def next_when(self) -> float | None:
        """When the loop must wake up next for its timers, or None."""
        if not self.n:
            return None
        if self._migrating is not None:
            self._advance_far()
        tick = self._next_tick()
        if tick is None:
            # Only far timers: wake up when the nearest far epoch begins
            # (O(1); the exact time is found once it is in the ring).
            epochs = self._far_epochs
            far = self._far
            while epochs and epochs[0] not in far:
                heapq.heappop(epochs)
            if not epochs:
                return None
            return max(self._limit, epochs[0] << _EPOCH_BITS) / TICKS_PER_SECOND
        fire = min([h._aem_fire for h in self._slots[tick].values()])
        if self._migrating is not None:
            return min(fire, self._clock() + _MIGRATE_WAKEUP)
        return fire

    # -- firing ---------------------------------------------------------------------

    def pop_due(self, end: float) -> list[AEMTimerHandle]:
        """Remove and return the timers that fire before *end*, in firing order."""
        if not self.n:
            return []
        end_tick = int(end * TICKS_PER_SECOND)
        if self._migrating is not None:
            if end_tick >= self._mig_epoch << _EPOCH_BITS:
                self._finish_migration()
            else:
                self._advance_far()
        out: list[AEMTimerHandle] = []
        ticks = 0
        slots = self._slots
        while True:
            new_cur = end_tick
            while True:
                tick = self._next_tick()
                if tick is None or tick > end_tick:
                    break
                b = slots[tick]
                due = [h for h in b.values() if h._aem_fire < end]
                if len(due) == len(b):
                    self._drop_slot(tick)
                else:
                    for h in due:
                        del b[h._aem_key]
                    new_cur = tick  # the rest of this tick is not due yet
                if due:
                    for h in due:
                        h._aem_bucket = None
                        h._scheduled = False
                    if len(due) > 1:
                        due.sort(key=_fire_key)
                    out.extend(due)
                    ticks += 1
                if new_cur == tick:
                    break
            if new_cur > self._cur:
                self._cur = new_cur
            if self._cur < self._limit - (1 << _EPOCH_BITS):
                break
            # The wheel entered the ring's last epoch: extend the ring by one
            # epoch (what it frees below _cur is empty) and look again, for
            # a loop that slept or was blocked far ahead.
            self._extend()
            if end_tick < self._limit - (1 << _EPOCH_BITS):
                break
        if out:
            n = len(out)
            self.n -= n
            self.fired += n
            self.wakeups += 1
            if n > 1:
                exact = {int(h._when * TICKS_PER_SECOND) for h in out}
                self.wakeups_saved += len(exact) - 1
        return out

    # -- epochs: far buckets enter the ring ----------------------------------------

    def _extend(self) -> None:
        """Add the next epoch to the ring; its far timers start migrating."""
        if self._migrating is not None:
            self._finish_migration()
        epoch = self._limit >> _EPOCH_BITS
        self._limit += 1 << _EPOCH_BITS
        b = self._far.pop(epoch, None)
        if b:
            # They stay cancellable in b (no longer indexed) while they wait.
            self._migrating = list(b.values())
            self._mig_epoch = epoch
            if (epoch << _EPOCH_BITS) - self._cur < (1 << _EPOCH_BITS) // 2:
                self._finish_migration()  # due too soon to spread the work

    def _advance_far(self) -> None:
        """Move one chunk of the migrating epoch into the ring."""
        mig = self._migrating
        assert mig is not None
        # The ring's next timer must not be later than a waiting far one.
        nxt = self._next_tick()
        if nxt is None or nxt >= self._mig_epoch << _EPOCH_BITS:
            self._finish_migration()
            return
        chunk = mig[-_MIGRATE_CHUNK:]
        del mig[-_MIGRATE_CHUNK:]
        if not mig:
            self._migrating = None
        self._move(chunk)

    def _finish_migration(self) -> None:
        mig = self._migrating
        self._migrating = None
        if mig:
            self._move(mig)

    def _move(self, hs: list[AEMTimerHandle]) -> None:
        insert = self._ring_insert
        for h in hs:
            b = h._aem_bucket
            if b is None:  # cancelled while it waited
                continue
            del b[h._aem_key]
            insert(h, ~h._aem_tick)

    def clear(self) -> None:
        for b in self._slots.values():
            for h in b.values():
                h._aem_bucket = None
                h._scheduled = False
        for b in self._far.values():
            for h in b.values():
                h._aem_bucket = None
                h._scheduled = False
        if self._migrating:
            for h in self._migrating:
                h._aem_bucket = None
                h._scheduled = False
        self._slots.clear()
        self._far.clear()
        self._far_epochs.clear()
        self._migrating = None
        self._words = [0] * _NWORDS
        self._summary = 0
        self.n = 0

    def info(self) -> dict[str, Any]:
        return {
            "pending": self.n,
            "fired": self.fired,
            "wakeups": self.wakeups,
            "wakeups_saved": self.wakeups_saved,
        }
