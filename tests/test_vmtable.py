"""vmtable: buddy allocator against a reference model, errors, vzone sharing."""

import asyncio
import itertools
import os

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aem_loop import Block, VMTable, VMTableError, VMTableExhausted

SIZE = 4096
MIN = 64


class BuddyMachine(RuleBasedStateMachine):
    """Random alloc/release against a model: the set of live (offset, cap)."""

    def __init__(self):
        super().__init__()
        self.t = VMTable(SIZE, min_block=MIN, zone="uzone")
        self.live: dict[int, tuple[Block, int, bytes]] = {}

    @rule(n=st.integers(1, SIZE), fill=st.integers(0, 255))
    def alloc(self, n, fill):
        cap = max(MIN, 1 << (n - 1).bit_length())
        try:
            b = self.t.alloc(n)
        except VMTableExhausted:
            # refused only if even fully merged no free block is large enough
            assert self.t.statistics().largest_free < cap
            return
        assert len(b) == n and b.capacity == cap and b.offset % cap == 0
        b[:] = bytes([fill]) * n
        self.live[b.offset] = (b, cap, bytes([fill]) * n)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        off = data.draw(st.sampled_from(sorted(self.live)))
        b, _, content = self.live.pop(off)
        assert b.tobytes() == content  # nobody wrote over it
        b.release()

    @invariant()
    def no_overlap_and_accounting(self):
        # Read the free lists as they are (statistics() would merge them, and
        # the lazy, unmerged state is what must be right between operations).
        free = [(off, MIN << k) for k, fl in enumerate(self.t._free) for off in fl]
        used = [(off, cap) for off, (_, cap, _) in self.live.items()]
        spans = sorted((off, off + size) for off, size in free + used)
        for (_, e1), (s2, _) in itertools.pairwise(spans):
            assert e1 <= s2  # no two blocks, live or free, overlap
        assert sum(size for _, size in free + used) == SIZE  # every byte accounted for

    def teardown(self):
        for b, _, _ in self.live.values():
            b.release()
        st_ = self.t.statistics()
        assert st_.free_blocks == {SIZE: 1}  # buddies merged back into one block
        self.t.close()


TestBuddy = BuddyMachine.TestCase
TestBuddy.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        VMTable(1000)
    with pytest.raises(ValueError, match="power of two"):
        VMTable(1024, min_block=48)
    with pytest.raises(ValueError, match="exceed"):
        VMTable(64, min_block=128)
    with pytest.raises(TypeError):
        VMTable(1024.0)
    with pytest.raises(ValueError, match="zone"):
        VMTable(1024, zone="kzone")
    with VMTable(1024) as t:
        with pytest.raises(ValueError, match="> 0"):
            t.alloc(0)
        with pytest.raises(ValueError, match="larger than the pool"):
            t.alloc(1025)
        with pytest.raises(TypeError):
            t.alloc("10")


def test_double_release_and_use_after_release():
    with VMTable(1024) as t:
        b = t.alloc(10)
        b[0] = 7
        b.release()
        with pytest.raises(VMTableError, match="twice"):
            b.release()
        with pytest.raises(VMTableError, match="after release"):
            b[0] = 1
        with pytest.raises(VMTableError, match="after release"):
            _ = b.view
        assert t.statistics().free_blocks == {1024: 1}


def test_exhaustion_default_raises_memoryerror():
    with VMTable(256, min_block=64) as t:
        blocks = [t.alloc(64) for _ in range(4)]
        with pytest.raises(VMTableExhausted) as ei:
            t.alloc(1)
        assert isinstance(ei.value, MemoryError)
        assert t.statistics().exhausted == 1
        for b in blocks:
            b.release()


def test_exhaustion_handler_fallback():
    calls = []

    def handler(table, n):
        calls.append(n)
        return bytearray(n)

    with VMTable(128, min_block=64, on_exhausted=handler) as t:
        a, b = t.alloc(64), t.alloc(64)
        c = t.alloc(100)
        assert c.fallback and len(c) == 100 and calls == [100]
        c[:] = b"x" * 100
        c.release()
        with pytest.raises(VMTableError):
            c.descriptor()
        assert t.statistics().fallbacks == 1
        a.release()
        b.release()


def test_exhaustion_handler_bad_buffer():
    with VMTable(64, min_block=64, on_exhausted=lambda t, n: b"readonly") as t:
        b = t.alloc(64)
        with pytest.raises(TypeError, match="writable"):
            t.alloc(10)
        b.release()


def test_close_releases_live_blocks():
    t = VMTable(1024, zone="vzone")
    b = t.alloc(100)
    t.close()
    assert b.released
    with pytest.raises(VMTableError):
        t.alloc(1)


@pytest.mark.parametrize("zone", ["uzone", "vzone"])
@pytest.mark.parametrize("holder", ["memoryview", "numpy"])
def test_close_with_a_buffer_still_exported_closes_whole_and_keeps_the_memory_valid(zone, holder):
    t = VMTable(4096, zone=zone)
    b = t.alloc(16)
    other = t.alloc(16)
    b[:] = b"0123456789abcdef"
    if holder == "numpy":
        np = pytest.importorskip("numpy")
        kept = np.frombuffer(b.view, dtype=np.uint8)
    else:
        kept = memoryview(b.view)[2:6]
    t.close()  # no BufferError, nothing half closed
    assert b.released and other.released and t.live_blocks == 0
    with pytest.raises(VMTableError, match="closed"):
        t.alloc(1)
    with pytest.raises(VMTableError):
        b.tobytes()
    # the outside buffer still reads the block's bytes: the pool's memory is
    # freed (a vzone unmapped) only when it is gone
    assert bytes(kept[:4]) == (b"0123" if holder == "numpy" else b"2345")
    t.close()  # idempotent
    del kept


def _in_child(fn) -> str:
    """Run *fn* in a forked child; what it returns (or raises) as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = f"ok {fn()}"
            except Exception as exc:  # reported to the parent
                out = f"{type(exc).__name__}: {exc}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


def test_vzone_allocation_is_refused_in_a_forked_child():
    """The allocator's state is per process: a child that allocated would
    hand out blocks the parent hands out too.  It gets a clear error; it
    still reads and writes the blocks handed to it."""
    with VMTable(1 << 16, zone="vzone") as t:
        b = t.alloc(64)
        off, length = b.descriptor()
        got = _in_child(lambda: t.alloc(64))
        assert got.startswith("VMTableError: cannot allocate in process"), got
        assert f"belongs to process {os.getpid()}" in got
        assert _in_child(lambda: b.release()).startswith("VMTableError: cannot release")

        def write_back():
            t.view(off, length)[:5] = b"child"
            return "written"

        assert _in_child(write_back) == "ok written"
        assert b.tobytes()[:5] == b"child"
        # a child that closes the table leaves the owner's blocks alone
        assert _in_child(lambda: t.close()) == "ok None"
        assert not b.released and t.live_blocks == 1
        c = t.alloc(64)
        assert c.offset != b.offset
        c.release()
        b.release()


def test_uzone_allocation_in_a_forked_child_is_its_own():
    with VMTable(4096, zone="uzone") as t:
        b = t.alloc(64)
        assert _in_child(lambda: t.alloc(64).offset) == f"ok {64}"  # its copy of the state
        b.release()


def test_vzone_shared_with_forked_child_without_copy():
    """The child reads the parent's block by descriptor and writes its answer
    into the same memory; the parent sees it: one mapping, no copy."""
    with VMTable(1 << 20, zone="vzone", min_block=4096) as t:
        b = t.alloc(1 << 19)
        b[:] = bytes(range(256)) * 2048
        off, length = b.descriptor()
        pid = os.fork()
        if pid == 0:  # the child: sum the block in place, write the result back
            try:
                v = t.view(off, length)
                total = sum(v[::4096])
                v[0:8] = total.to_bytes(8, "little")
                v.release()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        expected = sum((bytes(range(256)) * 2048)[::4096])
        assert int.from_bytes(b[0:8], "little") == expected
        b.release()


def test_uzone_is_private_to_a_forked_child():
    with VMTable(4096, zone="uzone") as t:
        b = t.alloc(8)
        b[:] = b"parent!!"
        pid = os.fork()
        if pid == 0:
            b[:] = b"child!!!"
            os._exit(0)
        os.waitpid(pid, 0)
        assert b.tobytes() == b"parent!!"
        b.release()


def test_alloc_wait_fifo_and_cancel():
    async def main():
        t = VMTable(128, min_block=64)
        a, b = t.alloc(64), t.alloc(64)
        w1 = asyncio.ensure_future(t.alloc_wait(64))
        w2 = asyncio.ensure_future(t.alloc_wait(64))
        w3 = asyncio.ensure_future(t.alloc_wait(64))
        await asyncio.sleep(0)
        w2.cancel()
        a.release()
        got1 = await w1
        b.release()
        got3 = await w3
        assert w2.cancelled()
        got1.release()
        got3.release()
        assert t.statistics().free_blocks == {128: 1}
        t.close()

    asyncio.run(main())


def test_truncate_keeps_slot_and_try_release():
    with VMTable(1024, min_block=64) as t:
        b = t.alloc(100)
        b[:] = b"y" * 100
        b.truncate(10)
        assert len(b) == 10 and b.capacity == 128 and b.tobytes() == b"y" * 10
        with pytest.raises(ValueError):
            b.truncate(11)
        assert b.try_release() is True
        with pytest.raises(VMTableError, match="twice"):
            b.try_release()
        assert t.statistics().free_blocks == {1024: 1}
