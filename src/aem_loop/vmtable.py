"""vmtable: a buddy-allocator buffer pool (AEM's VMT_UZONE / VMT_VZONE).

A pool of ``size`` bytes is cut into power-of-two blocks from ``min_block``
up to ``size`` (Knuth's binary buddy system).  Each order has a free list,
and a bitmap says which orders have a free block, so a request is served in
O(1) when a block of its order is free, and in O(log n) splits otherwise.

Merging is lazy (Barkley and Lee's "lazy buddy"): a released block goes back
on its own order's free list, where the next request of that size finds it
in O(1), instead of merging up through every order at each release and
splitting down again at the next request (a server that allocates and frees
one size paid ~14 merges and ~14 splits per buffer, 3 us, with a 16 MiB
pool).  Buddies are merged in one pass when a request finds no block, or
when statistics are read; so fragmentation is never worse than with eager
merging at the moment it matters.

Zones:

- ``"uzone"``: a private ``bytearray``: the fastest.
- ``"vzone"``: an anonymous *shared* mapping (``mmap(-1, size)``): a process
  forked after the table is created (a capsule) sees the same bytes, so a
  block can be handed over as ``(offset, length)`` with no copy.

Ownership rule for vzone hand-offs: the process that allocated a block is
the only one that releases it.  A child reads or writes the block through
:meth:`VMTable.view` while the parent keeps the block alive; the parent
releases it after the child has answered.

After ``release()`` the block's own view is released, and every use of the
block raises :class:`VMTableError`.  A memoryview you derived from
``block.view`` yourself (a slice, ``memoryview(block.view)``) shares the
memory and is not revoked: do not keep one past the release.

Free lists are ``dict``s used as ordered sets (O(1) insert, pop and removal
of a given buddy).
"""

from __future__ import annotations

import asyncio
import dataclasses
import mmap
import os
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "Block",
    "VMTable",
    "VMTableError",
    "VMTableExhausted",
    "VMTableStatistics",
]


class VMTableError(ValueError):
    """Misuse of a block: double release, use after release."""


class VMTableExhausted(MemoryError):
    """No free block is large enough and the exhaustion handler gave none."""


@dataclasses.dataclass(frozen=True)
class VMTableStatistics:
    zone: str
    size: int
    min_block: int
    bytes_in_use: int  # capacity of live blocks (what the pool has given out)
    in_use_by_order: dict[int, int]  # block size -> bytes in use
    free_blocks: dict[int, int]  # block size -> free blocks
    largest_free: int
    fragmentation: float  # 1 - largest_free / free bytes (0: one free block)
    allocs: int
    releases: int
    fallbacks: int  # blocks served by the exhaustion handler from plain memory
    exhausted: int  # requests that found no block


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


class Block:
    """A block of a VMTable: ``view`` is a writable memoryview of exactly the
    requested length.  Release it (or use ``with``) to return it to the pool;
    afterwards every use raises :class:`VMTableError`."""

    __slots__ = ("_base", "_order", "_table", "_view", "capacity", "fallback", "offset")

    def __init__(
        self, table: VMTable, view: memoryview, offset: int, capacity: int, order: int
    ) -> None:
        self._table: VMTable | None = table
        self._view: memoryview | None = view
        self._base: memoryview | None = None
        self.offset = offset  # -1 for a fallback block outside the pool
        self.capacity = capacity
        self._order = order
        self.fallback = offset < 0

    @property
    def view(self) -> memoryview:
        v = self._view
        if v is None:
            raise VMTableError("block used after release")
        return v

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, key: Any) -> Any:
        return self.view[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.view[key] = value

    def __buffer__(self, flags: int) -> memoryview:  # Python >= 3.12
        return self.view

    def truncate(self, n: int) -> None:
        """Make the block's view the first *n* bytes (its slot is unchanged)."""
        view = self.view
        if not 0 < n <= len(view):
            raise ValueError(f"truncate to {n} bytes: must be in 1..{len(view)}")
        if n < len(view):
            if self._base is None:
                self._base = view
            self._view = view[:n]

    def tobytes(self) -> bytes:
        return self.view.tobytes()

    def descriptor(self) -> tuple[int, int]:
        """``(offset, length)``: what a capsule needs to find the block in a vzone."""
        if self.fallback:
            raise VMTableError("a fallback block lives outside the pool; it has no descriptor")
        return self.offset, len(self.view)

    @property
    def released(self) -> bool:
        return self._view is None

    def release(self) -> None:
        """Return the block to the pool.  A second release raises."""
        if not self.try_release():
            raise VMTableError(
                "block is still exported (a transport or C code holds its "
                "buffer); release it when that is done"
            )

    def try_release(self) -> bool:
        """Release unless some C code still holds the buffer (then False and
        the block stays valid).  A released block raises VMTableError."""
        view, table = self._view, self._table
        if view is None or table is None:
            raise VMTableError("block released twice")
        if table._pid:
            table._check_owner("release a block")
        try:
            if self._base is not None:  # the longer view it was cut from
                self._base.release()
                self._base = None
            view.release()
        except BufferError:
            return False
        self._view = None
        self._table = None
        table._free_block(self)
        return True

    def _forget(self) -> None:
        """The table closes: drop the block without returning it.  A buffer
        exported from it (a numpy array, a view held by C code) keeps the
        memory valid until it is gone."""
        for v in (self._view, self._base):
            if v is not None:
                try:
                    v.release()
                except BufferError:
                    pass
        self._view = self._base = None
        self._table = None

    def __enter__(self) -> Block:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            self.release()

    def __repr__(self) -> str:
        state = "released" if self._view is None else f"len={len(self._view)}"
        return f"<Block offset={self.offset} capacity={self.capacity} {state}>"


class VMTable:
    """A buddy allocator over a private (``uzone``) or shared (``vzone``) pool.

    ``on_exhausted(table, n)`` decides what happens when no block fits: return
    a writable buffer of at least ``n`` bytes from ordinary memory (served as a
    fallback block), or None to raise :class:`VMTableExhausted` (the default).
    """

    def __init__(
        self,
        size: int,
        *,
        zone: str = "uzone",
        min_block: int = 64,
        on_exhausted: Callable[[VMTable, int], Any] | None = None,
    ) -> None:
        for name, v in (("size", size), ("min_block", min_block)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if not _is_pow2(v):
                raise ValueError(f"{name} must be a power of two > 0, got {v}")
        if min_block > size:
            raise ValueError(f"min_block ({min_block}) must not exceed size ({size})")
        if zone not in ("uzone", "vzone"):
            raise ValueError(f"zone must be 'uzone' or 'vzone', got {zone!r}")
        if on_exhausted is not None and not callable(on_exhausted):
            raise TypeError("on_exhausted must be callable or None")
        self.size = size
        self.min_block = min_block
        self.zone = zone
        self.on_exhausted = on_exhausted
        self._shift = min_block.bit_length() - 1
        self.max_order = (size // min_block).bit_length() - 1
        self._mem: bytearray | mmap.mmap
        if zone == "uzone":
            self._mem = bytearray(size)
        else:
            self._mem = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._mv = memoryview(self._mem)
        self._free: list[dict[int, None]] = [{} for _ in range(self.max_order + 1)]
        self._free[self.max_order][0] = None
        self._bits = 1 << self.max_order  # bit k: order k has a free block
        self._live: dict[int, Block] = {}
        self._waiters: deque[tuple[int, asyncio.Future[Block]]] = deque()
        self._allocs = self._releases = self._fallbacks = self._exhausted = 0
        self._unmerged = 0  # releases not yet merged with their buddies
        self._closed = False
        # a vzone's allocator state is its creator's: a forked child shares
        # the bytes but not the parent's later allocations (0: a uzone, whose
        # child has a private copy of both)
        self._pid = os.getpid() if zone == "vzone" else 0

    def _foreign(self) -> bool:
        """Whether this is a forked child of a vzone's creating process."""
        return bool(self._pid) and self._pid != os.getpid()

    def _check_owner(self, what: str) -> None:
        if self._foreign():
            raise VMTableError(
                f"cannot {what} in process {os.getpid()}: this vzone VMTable belongs to "
                f"process {self._pid}, which created it. A forked child reads and writes the "
                f"blocks handed to it (table.view(offset, length)); only the creating process "
                f"allocates and releases (its allocator state is not shared)"
            )

    def _check_can_allocate(self) -> None:
        if self._closed:
            raise VMTableError("VMTable is closed")
        self._check_owner("allocate")

    # -- allocation -------------------------------------------------------------

    def _order_for(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"size must be an int, not {type(n).__name__}")
        if n <= 0:
            raise ValueError(f"size must be > 0 bytes, got {n}")
        if n > self.size:
            raise ValueError(f"request of {n} bytes is larger than the pool ({self.size} bytes)")
        units = (n - 1) >> self._shift  # blocks of min_block, minus one
        return units.bit_length()

    def _take(self, order: int) -> int | None:
        """Offset of a free block of *order* (splitting a larger one), or None."""
        avail = self._bits >> order
        if not avail:
            return None
        j = order + (avail & -avail).bit_length() - 1  # smallest order >= order
        free = self._free
        off, _ = free[j].popitem()
        if not free[j]:
            self._bits &= ~(1 << j)
        while j > order:
            j -= 1
            free[j][off + (self.min_block << j)] = None  # upper half stays free
            self._bits |= 1 << j
        return off

    def _alloc_pool(self, n: int) -> Block | None:
        """A pool block for *n* bytes, or None when none fits."""
        order = self._order_for(n)
        off = self._take(order)
        if off is None:
            if not self._coalesce():
                return None
            off = self._take(order)
            if off is None:
                return None
        block = Block(self, self._mv[off : off + n], off, self.min_block << order, order)
        self._live[off] = block
        self._allocs += 1
        return block

    def alloc(self, n: int) -> Block:
        """A block of exactly *n* bytes (capacity: the next power of two)."""
        if self._closed or self._pid:  # one test on the uzone fast path
            self._check_can_allocate()
        block = self._alloc_pool(n)
        return block if block is not None else self._exhaust(n)

    def _exhaust(self, n: int) -> Block:
        self._exhausted += 1
        handler = self.on_exhausted
        buf = handler(self, n) if handler is not None else None
        if buf is None:
            raise VMTableExhausted(
                f"VMTable ({self.zone}, {self.size} bytes) has no free block for "
                f"{n} bytes; largest free block is {self._largest_free()} bytes"
            )
        view = memoryview(buf)
        if view.readonly or view.nbytes < n:
            raise TypeError(
                f"on_exhausted must return a writable buffer of at least {n} bytes"
            )
        self._fallbacks += 1
        return Block(self, view.cast("B")[:n], -1, view.nbytes, -1)

    async def alloc_wait(self, n: int) -> Block:
        """Like :meth:`alloc`, but wait for releases instead of exhausting
        (first come, first served)."""
        if self._closed or self._pid:  # one test on the uzone fast path
            self._check_can_allocate()
        if not self._waiters:
            block = self._alloc_pool(n)
            if block is not None:
                return block
        else:
            self._order_for(n)  # validate now, not when a block frees up
        fut: asyncio.Future[Block] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                fut.result().release()  # a block arrived as we were cancelled
            if entry in self._waiters:
                self._waiters.remove(entry)
            raise

    # -- release ---------------------------------------------------------------

    def _free_block(self, block: Block) -> None:
        self._releases += 1
        if block.fallback:
            return
        del self._live[block.offset]
        order = block._order
        self._free[order][block.offset] = None  # lazy: merged by _coalesce()
        self._bits |= 1 << order
        self._unmerged += 1
        waiters = self._waiters
        while waiters:
            n, fut = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            b = self._alloc_pool(n)
            if b is None:
                break
            waiters.popleft()
            fut.set_result(b)

    def _coalesce(self) -> bool:
        """Merge every pair of free buddies, bottom up.  True if anything merged."""
        if not self._unmerged:
            return False
        self._unmerged = 0
        merged = False
        free = self._free
        for order in range(self.max_order):
            fl = free[order]
            if len(fl) < 2:
                continue
            size = self.min_block << order
            for off in list(fl):
                if off not in fl:
                    continue  # taken as an earlier block's buddy
                buddy = off ^ size
                if buddy in fl:
                    del fl[off]
                    del fl[buddy]
                    free[order + 1][min(off, buddy)] = None
                    self._bits |= 1 << (order + 1)
                    merged = True
            if not fl:
                self._bits &= ~(1 << order)
        return merged

    # -- vzone hand-off ----------------------------------------------------------

    def view(self, offset: int, length: int) -> memoryview:
        """A view of ``(offset, length)`` in this pool: how a capsule reads a
        block that the parent allocated and handed over by descriptor."""
        if not (offset >= 0 and length > 0 and offset + length <= self.size):
            raise ValueError(f"({offset}, {length}) is outside the pool of {self.size} bytes")
        return self._mv[offset : offset + length]

    # -- statistics and teardown -------------------------------------------------

    def _largest_free(self) -> int:
        return self.min_block << (self._bits.bit_length() - 1) if self._bits else 0

    def statistics(self) -> VMTableStatistics:
        self._coalesce()  # report the merged layout: what a large request would find
        in_use: dict[int, int] = {}
        for b in self._live.values():
            in_use[b.capacity] = in_use.get(b.capacity, 0) + b.capacity
        free_blocks = {self.min_block << k: len(f) for k, f in enumerate(self._free) if f}
        free_bytes = sum(sz * c for sz, c in free_blocks.items())
        largest = self._largest_free()
        return VMTableStatistics(
            zone=self.zone,
            size=self.size,
            min_block=self.min_block,
            bytes_in_use=sum(in_use.values()),
            in_use_by_order=in_use,
            free_blocks=free_blocks,
            largest_free=largest,
            fragmentation=(1 - largest / free_bytes) if free_bytes else 0.0,
            allocs=self._allocs,
            releases=self._releases,
            fallbacks=self._fallbacks,
            exhausted=self._exhausted,
        )

    @property
    def live_blocks(self) -> int:
        return len(self._live)

    def close(self) -> None:
        """Release every live block and free the pool.

        A block whose buffer is still exported (a numpy array or a
        memoryview over ``block.view``, a transport writing it) is dropped
        from the table all the same; its memory stays valid until that last
        user is gone, and then the pool's memory is freed (a vzone is
        unmapped).  In a forked child, close() drops the child's view of the
        pool and leaves the blocks to the process that owns them.
        """
        if self._closed:
            return
        self._closed = True  # first: nothing is allocated from here on
        foreign = self._foreign()
        for b in list(self._live.values()):
            if foreign or not b.try_release():
                b._forget()
        self._live.clear()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(VMTableError("VMTable closed"))
        self._waiters.clear()
        self._mv.release()
        if isinstance(self._mem, mmap.mmap):
            try:
                self._mem.close()
            except BufferError:
                pass  # an export outlives the table: unmapped when it is gone

    def __enter__(self) -> VMTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<VMTable {self.zone} size={self.size} min_block={self.min_block} "
                f"live={len(self._live)}>")
