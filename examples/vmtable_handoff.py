"""Hand 1 MiB to a forked worker without copying it, through a vzone VMTable.

    python examples/vmtable_handoff.py

The parent fills a block, sends the worker only (offset, length) over a
pipe; the worker reads the bytes in place from the shared mapping and
answers with their CRC.  The parent owns the block and releases it after
the answer (the ownership rule for vzone hand-offs).
"""

import os
import zlib
from multiprocessing.connection import Pipe

import aem_loop


def main() -> None:
    table = aem_loop.VMTable(4 << 20, zone="vzone", min_block=4096)
    parent, child = Pipe()
    pid = os.fork()  # the worker inherits the shared mapping
    if pid == 0:
        parent.close()
        offset, length = child.recv()
        view = table.view(offset, length)
        child.send(zlib.crc32(view))
        view.release()
        os._exit(0)
    child.close()
    with table.alloc(1 << 20) as block:
        block[:] = os.urandom(len(block))
        parent.send(block.descriptor())
        crc = parent.recv()
        assert crc == zlib.crc32(block.view)
        print(f"worker read {len(block)} bytes in place, crc {crc:#010x}")
    os.waitpid(pid, 0)
    print(table.statistics())
    table.close()


if __name__ == "__main__":
    main()
