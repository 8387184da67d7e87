"""Pending timers of the core: a hashed timing wheel with an occupancy bitmap.

Why not asyncio's heap: a server sets a timeout per request and cancels most
of them.  In a heap, insert is O(log n) Python-level comparisons and cancel
only marks the handle; the garbage stays until the heap is rebuilt, an O(n)
pause (188 ms for a million cancelled timers here).  This wheel makes both
O(1) and a cancelled timer leaves the structure at once.

Layout (Varghese & Lauck's hashed wheel, with Linux's idea of finding the
next occupied slot through a bitmap instead of ticking through empty ones):

- Time is cut into ticks of 1 ms.  A *bucket* holds the timers whose firing
  time falls in one tick: a list ``[tick, live, h1, h2, ...]`` in the order
  they were scheduled.  Each handle knows its index; cancel puts None there
  (O(1), touches no other timer) and the handle is freed at once; the bucket
  is dropped when its last timer goes, and compacted when a timer is added
  to it while holes outnumber timers, so holes cost at most a pointer per
  live timer (plus the holes of a bucket nobody adds to any more: at most
  one pointer per timer it held).
- The *ring* (a list of 65536 buckets or None) holds the buckets of the
  current and the next *epoch* (2**15 ticks, about 33 s each), indexed by
  ``tick & 0xFFFF``.  An occupancy bitmap
  (1024 words of 64 bits plus one summary word of 1024 bits) finds the next
  non-empty tick in three steps, however far it is.
- Timers beyond the ring go to *far* buckets of 64 ticks each (a dict, with
  a heap of their keys to find the nearest).  When the wheel enters an
  epoch, the far buckets of the next one move into the ring in time order,
  about 512 timers per call, so that no single call pauses the loop; they
  have at least 16 s, and a bucket is moved at once only when it holds
  timers that are due.

- New timers first go to a *pending* bucket (an append): they enter the
  wheel when the loop next asks it anything (next_when, pop_due), in the
  order they were scheduled.  A timer cancelled before that never touches
  the wheel: a server that sets a timeout per request and cancels it
  before the loop's next iteration pays an append and a cancel.  A busy
  loop whose timers are all far off asks nothing for long, so the pending
  timers are kept in chunks of at most _CHUNK slots: when the current one
  is full it joins the older ones, and each time that happens two older
  chunks are visited (dropped if empty, compacted if mostly holes).  Every
  compaction rewrites one chunk: no pause grows with the number of timers.

Guarantees (asyncio's): a timer never fires before its time (the bucket is
only a hint: the exact time is compared); timers due at the same time fire
in the order they were scheduled (buckets keep that order and a due batch
is sorted by time with a stable sort).

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
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, Any

__all__ = ["TICKS_PER_SECOND", "AEMTimerHandle", "TimerWheel", "slack_fire_time"]

TICKS_PER_SECOND = 1000.0
_EPOCH_BITS = 15  # ticks per epoch: 32768 (32.8 s)
_FAR_BITS = 6  # a far bucket spans 64 ticks: compacting one is a short pause
_FAR_PER_EPOCH = 1 << (_EPOCH_BITS - _FAR_BITS)
_NEVER = 1 << 62  # the tick of an infinite deadline
_RING_BITS = _EPOCH_BITS + 1  # the ring holds two epochs
_RING_MASK = (1 << _RING_BITS) - 1
_NWORDS = (1 << _RING_BITS) >> 6  # 64-bit occupancy words
# Far timers moved into the ring per call while an epoch migrates.
_MIGRATE_CHUNK = 512
# While an epoch migrates, an idle loop wakes up this often to move a chunk.
_MIGRATE_WAKEUP = 0.010
# Slots of a pending chunk (compacting one touches at most this many timers).
_CHUNK = 4096

_fire_key = attrgetter("_aem_fire")


class AEMTimerHandle(events.TimerHandle):
    """The loop's timer handle: an :class:`asyncio.TimerHandle` that knows its bucket.

    ``cancel()`` removes it from the wheel at once (no cancelled garbage).
    Equality, hashing and repr (``<TimerHandle ...>``) stay asyncio's.
    """

    # _aem_q: see core.handles (the dispatch loop clears it on every handle)
    __slots__ = ("_aem_bucket", "_aem_fire", "_aem_idx", "_aem_q", "_aem_wheel")
    _aem_bucket: list[Any] | None  # [tick or ~far key, live, handles or None...]
    _aem_fire: float  # when it fires: its time, or later by its slack
    _aem_idx: int  # its index in its bucket
    _aem_wheel: TimerWheel
    if TYPE_CHECKING:  # asyncio's private slots, not in typeshed
        _when: float
        _cancelled: bool
        _scheduled: bool
        _source_traceback: Any
        _repr: str | None
        _callback: Any
        _args: Any

    def _repr_info(self) -> list[str]:
        # asyncio's: "<TimerHandle when=...>" (code and tests read it, e.g.
        # debug mode's slow-callback messages)
        info: list[str] = super()._repr_info()  # type: ignore[misc]
        info[0] = "TimerHandle"
        return info

    def cancel(self) -> None:
        # Handle.cancel(), inlined, plus leaving the wheel; no call into the
        # loop (TimerHandle.cancel's _timer_handle_cancelled is not needed).
        if not self._cancelled:
            self._cancelled = True
            b = self._aem_bucket
            if b is not None:
                b[self._aem_idx] = None
                self._aem_bucket = None
                live = b[1] - 1
                b[1] = live
                wheel = self._aem_wheel
                wheel.n -= 1
                if not live:
                    wheel._shrink(b)
            self._scheduled = False
            if self._source_traceback is not None:  # made in debug mode
                self._repr = repr(self)
            self._callback = None
            self._args = None


def slack_fire_time(when: float, slack: float) -> float:
    """When a timer due at *when* with *slack* seconds of slack fires."""
    if slack < 0.001 or not -math.inf < when < math.inf:
        return when
    g = float(1 << int(math.log2(slack * TICKS_PER_SECOND))) / TICKS_PER_SECOND
    fire = math.ceil(when / g) * g
    return fire if fire >= when else when


def _compact(b: list[Any]) -> None:
    """Drop the holes of bucket *b*; reindex its timers, keep their order."""
    hs = [h for h in islice(b, 2, None) if h is not None]
    del b[2:]
    for i, h in enumerate(hs, 2):
        h._aem_idx = i
    b.extend(hs)


def _merge(a: list[Any], b: list[Any]) -> None:
    """Move the timers of bucket *b* to the end of bucket *a*, in order; drop
    the holes of both."""
    _compact(a)
    i = len(a)
    for h in islice(b, 2, None):
        if h is not None:
            h._aem_idx = i
            h._aem_bucket = a
            a.append(h)
            i += 1
    a[1] += b[1]
    b[1] = 0
    del b[2:]


class TimerWheel:
    """The core's pending timers (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_cur",
        "_direct",
        "_far",
        "_far_keys",
        "_limit",
        "_mig_end",
        "_mig_key",
        "_old",
        "_pend",
        "_ring",
        "_spare",
        "_summary",
        "_sweep",
        "_words",
        "fired",
        "n",
        "soon",
        "wakeups",
        "wakeups_saved",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.n = 0  # live pending timers
        # No pending timer fires before this (a lower bound: pop_due before
        # it has nothing to do, which a busy loop asks at every round; the
        # scheduler's slice boundary and the uvloop backend read it too).
        self.soon = math.inf
        self._ring: list[list[Any] | None] = [None] * (_RING_MASK + 1)
        self._words = [0] * _NWORDS
        self._summary = 0
        # Every ring bucket's tick is >= _cur; ticks below it were processed.
        self._cur = int(clock() * TICKS_PER_SECOND)
        # Ring ticks are < _limit (end of the epoch after _cur's).
        self._limit = ((self._cur >> _EPOCH_BITS) + 2) << _EPOCH_BITS
        # push() puts ticks below _direct in the ring: _limit, or, while an
        # epoch migrates in, the start of its first far bucket not moved yet
        # (new timers there queue behind the old ones).
        self._direct = self._limit
        # far buckets: tick >> _FAR_BITS -> [~key, live, handles...]
        self._far: dict[int, list[Any]] = {}
        self._far_keys: list[int] = []  # heap; may hold keys emptied since
        self._mig_key = -1  # next far key of the migrating epoch, or -1
        self._mig_end = -1
        # timers not in the wheel yet: [None, live, handles or None...], the
        # chunk being filled, and the full ones before it (oldest first)
        self._pend: list[Any] = [None, 0]
        self._old: list[list[Any]] = []
        self._sweep = 0  # the next old chunk to visit
        self._spare: list[list[Any]] = []  # emptied chunks, for reuse
        self.fired = 0
        self.wakeups = 0  # pop_due calls that fired at least one timer
        self.wakeups_saved = 0

    def __len__(self) -> int:
        return self.n

    # -- insert / remove -------------------------------------------------------

    def push(self, h: AEMTimerHandle, fire: float) -> None:
        """Schedule *h* to fire at *fire* (>= its ``_when``): into the pending
        bucket, which enters the wheel at the next question (_flush)."""
        h._aem_fire = fire
        h._aem_wheel = self
        self.n += 1
        if fire < self.soon:
            self.soon = fire
        b = self._pend
        live = b[1] + 1
        n = len(b)
        if n > 2 * live + 16:
            _compact(b)  # timers set and cancelled within one iteration
        elif n >= _CHUNK:
            b = self._rotate(b)
            live = 1
        b[1] = live
        h._aem_idx = len(b)
        b.append(h)
        h._aem_bucket = b

    def _rotate(self, full: list[Any]) -> list[Any]:
        """The pending chunk *full* joins the older ones; a new one begins.
        Two old chunks are visited: an empty one leaves, a sparse one takes
        in the timers of the next if both fit in half a chunk (so the number
        of chunks stays bounded by the timers they hold, and a loop that
        churns timers does not keep allocating lists), else is compacted if
        holes outnumber its timers."""
        old = self._old
        old.append(full)
        # Chunks that leave are reused: churning timers allocates no lists
        # (a net allocation count that only grows would start the garbage
        # collector's young generation, over every timer made since).
        spare = self._spare
        i = self._sweep
        for _ in range(2):
            last = len(old) - 1  # the chunk just added is left alone
            if i >= last:
                i = 0
                if not last:
                    break
            c = old[i]
            live = c[1]
            if not live:
                spare.append(old.pop(i))  # O(chunks): far less than one compaction
                continue
            if i + 1 < last and live + old[i + 1][1] <= _CHUNK // 2:
                nxt = old.pop(i + 1)
                _merge(c, nxt)
                spare.append(nxt)
            elif len(c) > 2 * live + 16:
                _compact(c)
            i += 1
        self._sweep = i
        if spare:
            b = spare.pop()  # [None, 0]: no timer left in it
            del b[2:], spare[4:]
        else:
            b = [None, 0]
        self._pend = b
        return b

    def _flush(self) -> None:
        """The pending timers enter the wheel, in the order they were scheduled."""
        chunks = self._old
        chunks.append(self._pend)
        self._old = []
        self._sweep = 0
        self._pend = [None, 0]
        insert = self._insert
        for b in chunks:
            for h in islice(b, 2, None):
                if h is not None:
                    insert(h, h._aem_fire)

    def _insert(self, h: AEMTimerHandle, fire: float) -> None:
        """Put *h* in its bucket of the ring or of the far timers."""
        try:
            tick = int(fire * TICKS_PER_SECOND)
        except OverflowError:  # call_later(math.inf): sleep forever (or -inf: now)
            tick = _NEVER if fire > 0 else 0
        if tick < self._direct:
            if tick < self._cur:
                tick = self._cur
            pos = tick & _RING_MASK
            b = self._ring[pos]
            if b is None:
                self._ring[pos] = b = [tick, 0]
                i = pos >> 6
                w = self._words[i]
                if not w:
                    self._summary |= 1 << i
                self._words[i] = w | (1 << (pos & 63))
        else:
            key = tick >> _FAR_BITS
            b = self._far.get(key)
            if b is None:
                self._far[key] = b = [~key, 0]  # negative: a far bucket
                heapq.heappush(self._far_keys, key)
        live = b[1] + 1
        b[1] = live
        if len(b) > 2 * live + 16:
            # Holes (cancelled timers) outnumber timers in a bucket that is
            # still filling: squeeze them out now.  Done on insert, not on
            # cancel, so cancelling a whole batch never rewrites buckets.
            _compact(b)
        h._aem_idx = len(b)
        b.append(h)
        h._aem_bucket = b

    def _shrink(self, b: list[Any]) -> None:
        """A cancel left bucket *b* empty: drop it."""
        tick = b[0]
        if tick is None:  # the pending bucket: empty it
            del b[2:]
            return
        if tick >= 0:
            self._drop_slot(tick)
        else:
            key = ~tick
            if self._far.get(key) is b:
                del self._far[key]  # its key leaves the heap lazily

    def _drop_slot(self, tick: int) -> None:
        pos = tick & _RING_MASK
        self._ring[pos] = None
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
        if len(self._pend) > 2 or self._old:
            self._flush()
        if self._mig_key >= 0:
            self._advance_far()
        tick = self._next_tick()
        if tick is None:
            fire = math.inf
        else:
            b = self._ring[tick & _RING_MASK]
            assert b is not None
            fire = min([h._aem_fire for h in islice(b, 2, None) if h is not None])
        if self._mig_key >= 0:
            # far timers not moved yet are all at or after _direct; an idle
            # loop also wakes up now and then to move them
            return min(fire, self._direct / TICKS_PER_SECOND,
                       self._clock() + _MIGRATE_WAKEUP)
        if tick is None:
            # Only far timers: wake up when the nearest far bucket begins
            # (O(1); the exact time is found once it is in the ring).
            keys = self._far_keys
            far = self._far
            while keys and keys[0] not in far:
                heapq.heappop(keys)
            if not keys:
                return None
            return max(self._limit, keys[0] << _FAR_BITS) / TICKS_PER_SECOND
        return fire

    # -- firing ---------------------------------------------------------------------

    def pop_due(self, end: float) -> list[AEMTimerHandle]:
        """Remove and return the timers that fire before *end*, in firing order."""
        if not self.n or end <= self.soon:
            return []
        if len(self._pend) > 2 or self._old:
            self._flush()
        end_tick = int(end * TICKS_PER_SECOND)
        if self._mig_key >= 0:
            self._advance_far(end_tick)
        out: list[AEMTimerHandle] = []
        ticks = 0
        ring = self._ring
        while True:
            new_cur = end_tick
            while True:
                tick = self._next_tick()
                if tick is None or tick > end_tick:
                    self.soon = self._lower_bound(tick, end)
                    break
                b = ring[tick & _RING_MASK]
                assert b is not None
                due = [h for h in islice(b, 2, None) if h is not None and h._aem_fire < end]
                if len(due) == b[1]:
                    self._drop_slot(tick)
                else:
                    # the rest of this tick is not due yet: keep it, in order
                    for h in due:
                        b[h._aem_idx] = None
                    b[1] -= len(due)
                    _compact(b)
                    new_cur = tick
                if due:
                    for h in due:
                        h._aem_bucket = None
                        h._scheduled = False
                    if len(due) > 1:
                        due.sort(key=_fire_key)  # stable: same time, FIFO
                    out.extend(due)
                    ticks += 1
                if new_cur == tick:
                    self.soon = end  # the rest of this tick fires at or after end
                    break
            if new_cur > self._cur:
                self._cur = new_cur
            if self._cur < self._limit - (1 << _EPOCH_BITS):
                break
            # The wheel entered the ring's last epoch: extend the ring by one
            # epoch (what it frees below _cur is empty) and look again, for
            # a loop that slept or was blocked far ahead.
            self._extend()
            if self._mig_key >= 0:  # its chunks move on later calls: no shortcut
                self.soon = end
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

    def _lower_bound(self, tick: int | None, end: float) -> float:
        """A time no pending timer fires before, all before *end* gone and
        *tick* the first occupied ring tick (or None)."""
        if self._mig_key >= 0:  # far timers are moving in: no shortcut
            return end
        if tick is not None:
            return max(end, tick / TICKS_PER_SECOND)
        keys = self._far_keys  # may hold emptied keys: smaller, still a bound
        return max(end, (keys[0] << _FAR_BITS) / TICKS_PER_SECOND) if keys else math.inf

    # -- epochs: far buckets enter the ring ----------------------------------------

    def _extend(self) -> None:
        """Add the next epoch to the ring; its far buckets start migrating."""
        if self._mig_key >= 0:
            self._advance_far(None)  # finish the previous one
        epoch = self._limit >> _EPOCH_BITS
        self._limit += 1 << _EPOCH_BITS
        # Its far buckets move in time order, a chunk per loop iteration;
        # until one has moved, new timers for its ticks still go into it.
        first = epoch * _FAR_PER_EPOCH
        keys = self._far_keys
        while keys and keys[0] not in self._far:
            heapq.heappop(keys)
        if not keys or keys[0] >= first + _FAR_PER_EPOCH:
            self._direct = self._limit  # nothing far in that epoch
            return
        self._mig_key = max(first, keys[0])
        self._mig_end = first + _FAR_PER_EPOCH
        self._direct = self._mig_key << _FAR_BITS
        if (epoch << _EPOCH_BITS) - self._cur < (1 << _EPOCH_BITS) // 2:
            self._advance_far(None)  # due too soon to spread the work

    def _advance_far(self, end_tick: int | None = -1) -> None:
        """Move far buckets of the migrating epoch into the ring.

        *end_tick* -1: one chunk; a tick: at least every bucket that can hold
        a timer due by then, then a chunk; None: all of them.
        """
        far = self._far
        moved = 0
        key = self._mig_key
        while key < self._mig_end:
            start = key << _FAR_BITS
            if moved >= _MIGRATE_CHUNK and (end_tick is not None and start > end_tick):
                break
            b = far.pop(key, None)
            key += 1
            if b is not None:
                # from now on push() puts this bucket's ticks in the ring
                self._direct = key << _FAR_BITS
                for h in islice(b, 2, None):
                    if h is not None:
                        self._insert(h, h._aem_fire)
                moved += b[1]
        if key >= self._mig_end:
            self._mig_key = self._mig_end = -1
            self._direct = self._limit
        else:
            self._mig_key = key
            self._direct = key << _FAR_BITS

    def clear(self) -> None:
        for b in [*self._ring, *self._far.values(), *self._old, self._pend]:
            if b is not None:
                for h in islice(b, 2, None):
                    if h is not None:
                        h._aem_bucket = None
                        h._scheduled = False
        self._ring = [None] * (_RING_MASK + 1)
        self._pend = [None, 0]
        self._old = []
        self._sweep = 0
        self._far.clear()
        self._far_keys.clear()
        self._mig_key = self._mig_end = -1
        self._direct = self._limit
        self._words = [0] * _NWORDS
        self._summary = 0
        self.soon = math.inf
        self.n = 0
