"""Events: a line server on loop.add_event, an urgent and a bulk registration.

    python examples/events_demo.py [selector|uvloop]

A client sends 2,000 lines; two registrations on the same socket (one at
HIGH, one at LOW) both receive every line, complete, in order.  A user
event is triggered from 4 threads; its handler receives every value,
merged into few activations.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

import aem_loop
from aem_loop import Priority, framers


async def main() -> None:
    loop = asyncio.get_running_loop()
    server_side, client_side = socket.socketpair()
    server_side.setblocking(False)
    source = aem_loop.SocketData(server_side, framers.Lines())
    got: dict[str, list[bytes]] = {"high": [], "low": []}

    high = loop.add_event(source, lambda act: got["high"].extend(act.data),
                          priority=Priority.HIGH, name="high")
    low = loop.add_event(source, lambda act: got["low"].extend(act.data),
                         priority=Priority.LOW, name="low")
    lines = [f"line {i}".encode() for i in range(2000)]
    sender = threading.Thread(target=client_side.sendall, args=(b"\n".join(lines) + b"\n",))
    sender.start()
    await asyncio.to_thread(sender.join)
    client_side.shutdown(socket.SHUT_WR)
    await high.wait_unregistered()
    await low.wait_unregistered()
    for ev in (high, low):
        st = ev.statistics()
        print(f"{ev.name:4}: {len(got[ev.name])} lines complete and in order: "
              f"{got[ev.name] == lines}; {st.activations} activations for "
              f"{st.occurrences} reads ({st.merged} merged)")
    server_side.close()
    client_side.close()

    values: list[int] = []
    user = loop.add_event(aem_loop.UserEvent(), lambda act: values.extend(act.data))

    def trigger(base: int) -> None:
        for i in range(1000):
            user.trigger(base + i)

    threads = [threading.Thread(target=trigger, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    await user.wait_idle()
    st = user.statistics()
    print(f"user event: {len(values)} values from 4 threads, none lost: "
          f"{sorted(values) == list(range(4000))}; {st.activations} activations")
    user.unregister()


if __name__ == "__main__":
    try:
        aem_loop.run(main(), backend=sys.argv[1] if len(sys.argv) > 1 else "selector")
    except KeyboardInterrupt:
        pass
