"""Backend "uvloop": uvloop's libuv I/O with the AEM core as the scheduler.

libuv runs I/O and calls uvloop's transports, which call protocols directly.
What goes through the core here:

- ``call_soon`` (so every task step and future callback), ``call_later`` /
  ``call_at`` (one libuv timer for the earliest core timer, not one per
  call), ``call_soon_threadsafe`` (so executor results and
  ``run_coroutine_threadsafe``), and ``create_task(priority=)``;
- readers and writers (``add_reader``/``add_writer``): libuv's readiness
  queues the callback, coalesced while queued, at the priority of the
  context that added it (so a reader cannot run again before a callback
  queued ahead of it, such as the future's done callback that removes it);
- protocol callbacks of connections made under a non-default priority
  (:mod:`aem_loop.backends.uvproto`): they run directly when nothing more
  urgent is queued (the fast path), and are queued at their priority
  otherwise.

The core runs as one uvloop handle, ``_aem_dispatch``, re-armed while work
is queued; libuv polls I/O (without blocking, since a handle is ready)
between two rounds, so the time slice bounds urgent latency here too.

Fast path: until the first callback, task, timer or connection at a
non-default priority, ``call_soon``, ``call_soon_threadsafe`` and
``add_reader``/``add_writer`` hand their callbacks straight to uvloop
(there is nothing to order yet), so unmodified programs run at uvloop's
speed.  From the first non-default priority on, the core orders every
callback; what uvloop's queue holds at that moment is taken back (held) and
released one callback at a time after more urgent work and due timers.
``fast_path=False`` makes the core dispatch everything from the start.

Hand-off: uvloop's own queue (its ready deque, found once per loop) is used
as one level of the core.  A ``call_soon`` at level L goes straight to
uvloop -- no handle of ours, no core round -- when the core holds nothing,
no round is armed, no I/O was registered and no timer is pending above L,
and what is handed off and still pending is at L.  Work queued in the core
above L meanwhile is run by a round put at the *front* of uvloop's deque
(so before the pending hand-offs); work at or below L by a round at the
back (after them, so FIFO holds).  While that round is armed, and while it
runs, callbacks at L are still handed off, behind it: it runs what the core
held at L when the first of them was made (up to that callback, the tail)
and nothing below L, and a hand-off is made only while the core's level L
still ends with the tail (nothing queued there since).  If that round is
cut short before the tail (more urgent work took its share), uvloop's
queue is held and released after libuv's next poll, behind the rest.  A
round at the back with nothing handed off behind it ends the hand-off
epoch; at most HANDOFF_MAX hand-offs come in one.  I/O registered above L
stops hand-offs at L, except servers and connections made under a priority
above the default, and classified servers: their fds are watched in an
epoll set of the loop's own that a checkpoint among the hand-offs asks
(after at most CHECK_EVERY of them, about once per time slice; see
``UrgentFdsMixin``).  What other threads queue
is taken into the core by a handle put at the front.  A program whose
streams or tasks are woken at one level thus pays one Python call per
wakeup (a closure installed as the loop's call_soon), not the core's
queue, also while the core holds work (a timer's callback, a task created
at another level).

What differs from "selector": uvloop's own internal callbacks (signal
handlers registered with ``add_signal_handler``, connection_made of
default-priority connections, server accept) run directly from libuv
before the core's next round, not in priority order.
"""

from __future__ import annotations

import collections
import contextvars
import math
import threading
import time
from asyncio import events
from collections.abc import Callable
from typing import Any

import uvloop

from ..capsules.cloner import CapsuleLoopMixin
from ..core.handles import AEMHandle
from ..core.loopbase import (
    FAST_HANDLES,
    AEMLoopMixin,
    check_fast_path,
    fast_handle,
    make_scheduler,
)
from ..core.priority import DEFAULT_PRIORITY, PRIORITY_VAR, on_first_priority
from ..core.scheduler import _BIT
from ..events.loop import EventsLoopMixin
from .uvhandoff import (
    _NEVER,
    _UNSET,
    HANDOFF_MAX,
    HeldQueueMixin,
    UrgentFdsMixin,
    _fileno,
    _find_ready,
    _HandOff,
    _noop,
)
from .uvproto import PriorityServerMixin
from .uvsendfile import SendfileMixin
from .uvspawn import with_posix_ids

__all__ = ["UVLoop"]

# The longest the libuv timer is armed for; a later deadline simply re-arms
# when it fires (avoids libuv's uint64 millisecond overflow paths).
_MAX_ARM_SECONDS = 86400.0

_monotonic = time.monotonic
_uv_call_soon = uvloop.Loop.call_soon
_uv_call_later = uvloop.Loop.call_later
_uv_call_soon_threadsafe = uvloop.Loop.call_soon_threadsafe
_uv_add_reader = uvloop.Loop.add_reader
_uv_add_writer = uvloop.Loop.add_writer
_uv_remove_reader = uvloop.Loop.remove_reader
_uv_remove_writer = uvloop.Loop.remove_writer


_INF = math.inf
# The closure's default for the first argument of call_soon: none given.
_NO_ARG: Any = object()


class UVLoop(PriorityServerMixin, UrgentFdsMixin, HeldQueueMixin, SendfileMixin,  # type: ignore[misc]
             EventsLoopMixin, CapsuleLoopMixin, AEMLoopMixin, uvloop.Loop):
    """A uvloop loop whose callbacks, tasks and timers run in priority order."""

    _aem_backend = "uvloop"
    _aem_timer_hook = True

    def __init__(self, *, fast_path: bool = True, **options: Any) -> None:
        super().__init__()
        try:
            check_fast_path(fast_path)
            self._aem = make_scheduler(self, options)
        except BaseException:
            # uvloop opened its libuv loop on allocation; only close() frees it.
            uvloop.Loop.close(self)
            raise
        self._aem.set_debug(self.get_debug())
        # The levels I/O can bring work at, for the core's slices: libuv's own
        # (default-priority transports, servers, signals, subprocesses) at the
        # default level, and each level I/O is registered at (_aem_note_io).
        # A slice ends in a poll only while I/O above the backlog may wait.
        self._aem.io_register(DEFAULT_PRIORITY)
        self._aem_armed = False
        # Hand-off state (see the module docstring).
        self._aem_ready, self._aem_noop = _find_ready(self)
        self._aem_ho = _HandOff()
        self._aem_inbox_h: Any = None
        if self._aem_ready is not None:  # else never hand off
            self._aem_ho.budget = self._aem_ho.base = HANDOFF_MAX
            # a handle that takes the inbox, put at the front by other threads
            self._aem_inbox_h = _uv_call_soon(self, self._aem_take_inbox)
            self._aem_ready.pop()
        self._aem_keep = False  # the armed round may run before pending hand-offs
        self._aem_front = False  # a preempting round is queued at the front
        self._aem_front_h: Any = None  # its handle in uvloop's queue
        self._aem_front_since = -1.0
        # What uvloop's queue held when the fast path ended, released one by
        # one by the feeder (see _aem_hold).
        self._aem_held: collections.deque[Any] = collections.deque()
        self._aem_feeder: Any = None
        self._aem_feed_since = -1.0
        self._aem_lead_rest = 0  # run by the feeder before the held callbacks
        self._aem_held_since = 0.0  # when a held callback was last released (or held)
        self._aem_urgent: Any = None  # the epoll set of urgent fds (_aem_watch)
        # fd -> (the level its events run at, who watches it, a listening socket?)
        self._aem_urgent_fds: dict[int, tuple[int, Any, bool]] = {}
        self._aem_watch_top = -1  # the highest level an fd was watched at
        self._aem_sig: Any = None  # signalled instead (_aem_signals), made when asked
        self._aem_sig_h: Any = None
        self._aem_thread: int | None = None
        # The fast path: until the process first uses a non-default priority
        # there is nothing to order, and uvloop's own call_soon is this
        # loop's (an instance attribute, found before the class's method):
        # the futures and tasks of an unmodified program call it with no
        # Python frame of ours in between (a frame that forwards costs ~20%
        # of a streams echo round trip on uvloop).  The first priority
        # (checked in core.priority) ends it for every loop.
        if fast_path and not self.get_debug():
            self._aem_mixed = False
            if type(self).call_soon is UVLoop.call_soon:  # not a subclass's own
                self.__dict__["call_soon"] = _uv_call_soon.__get__(self)
            on_first_priority(self)
        else:
            self._aem_install_call_soon()
        self._aem_closed = False
        self._aem_uv_timer: Any = None
        self._aem_timer_when = _INF
        self._current_handle = None
        # (uvloop's add function, fd) -> the queued handle of a reader/writer
        self._aem_io: dict[tuple[Any, int | None], events.Handle] = {}

    def _aem_run_debug_handoff(self, handle: Any) -> None:
        """A hand-off in debug mode: timed by the core (see slow_callback_duration)."""
        if not handle._cancelled:
            self._aem._run_debug(handle)

    # -- entry points into the core ---------------------------------------------

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> Any:
        if not self._aem_mixed:
            # Fast path: while every callback so far ran at the default
            # priority, there is nothing to order; uvloop's own C queue runs it.
            if context is None:
                level = PRIORITY_VAR.get(DEFAULT_PRIORITY)
            else:
                level = context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
            # Reached through the class only (e.g. super().call_soon): the
            # loop's own attribute is uvloop's method on the fast path.
            if level == DEFAULT_PRIORITY:
                return _uv_call_soon(self, callback, *args, context=context)
            self._aem_leave_fast_path()
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        sched = self._aem
        ho = self._aem_ho
        bits = sched._bits
        if bits:  # inside a round, the running level's bit stays set while it drains
            cur = sched.current
            if cur >= 0 and bits == _BIT[cur] and not sched._levels[cur]:
                bits = 0
        if (ho.budget <= 0 and not bits and not self._aem_armed and not self._aem_held
                and not self._aem_front and self._aem_ready is not None):
            # The budget is spent with nothing in the core and no round armed:
            # a new epoch now (a round at the back would only end this one,
            # and take every wakeup made until it ran into the core).
            self._aem_count_handoffs(ho.budget)
            ho.budget = ho.base = HANDOFF_MAX
        if ho.budget > 0 and not bits and not sched.inbox and not sched.boosts:
            # Hand-off: nothing queued in the core, nothing registered for I/O
            # above this level, no hand-off pending at another level: uvloop's
            # own queue keeps it in order (see the module docstring).
            if context is None:
                level = PRIORITY_VAR.get(DEFAULT_PRIORITY)
            else:
                level = context.get(PRIORITY_VAR, DEFAULT_PRIORITY)
            if level < ho.top and not sched.timers.n:
                ho.top = ho.io_top  # the urgent timers are gone
            h = ho.h
            if level >= ho.top and sched.current <= level and (h == level or h < 0):
                if h < 0:
                    ho.h = level
                    ho.above = 2 << level
                ho.budget -= 1
                if ho.check > level and not ho.budget & ho.mask:
                    _uv_call_soon(self, self._aem_checkpoint)  # runs before it: as well
                if not sched.debug:
                    return _uv_call_soon(self, callback, *args, context=context)
                # debug mode: the handle records where it was made, as the core's do
                handle = AEMHandle(callback, args, self, context)  # type: ignore[arg-type]
                self._aem_check_thread()
                if handle._source_traceback:
                    del handle._source_traceback[-1]
                _uv_call_soon(self, self._aem_run_debug_handoff, handle)
                return handle
        if sched.debug or not FAST_HANDLES:
            handle = AEMHandle(callback, args, self, context)  # type: ignore[arg-type]
            if handle._source_traceback:  # captured in debug mode only
                self._aem_check_thread()
                del handle._source_traceback[-1]
        else:
            handle = fast_handle(self, callback, args, context)
        if context is None or self._aem_creating:
            sched.push(handle)
        else:
            sched.push_woken(handle)
        self._aem_arm()
        return handle

    def _aem_install_call_soon(self) -> None:
        """The loop's own ``call_soon`` while the core orders everything: a
        closure that hands off with a few slot reads and leaves the rest to
        the class's method (an instance attribute, as on the fast path; not
        in debug mode, nor for a subclass with a call_soon of its own)."""
        if (getattr(self, "_aem_ready", None) is None  # none, or not built yet
                or self._aem.debug or not FAST_HANDLES
                or type(self).call_soon is not UVLoop.call_soon):
            return
        loop = self
        sched = self._aem
        ho = self._aem_ho
        get = PRIORITY_VAR.get
        var = PRIORITY_VAR
        general = UVLoop.call_soon

        uv_call_soon = _uv_call_soon.__get__(loop)
        push = sched.push
        push_woken = sched.push_woken
        levels = sched._levels
        checkpoint = self._aem_checkpoint

        def call_soon(callback: Callable[..., object], first_arg_: Any = _NO_ARG, *rest: Any,
                      context: Any = None) -> Any:
            # The first argument has a parameter of its own: a future's done
            # callback (one argument) and a task's step (none) are forwarded
            # to uvloop with a vectorcall, not through an *args tuple and a
            # keyword dict (~0.4 us a call here, a streams echo's round trip
            # is ~14 us).  Its name is one no caller passes by keyword (stock
            # call_soon takes none but context: call_soon(cb, arg=1) raises).
            if not sched._bits:
                if ho.budget > 0 and not sched.inbox and not sched.boosts:
                    level = get(DEFAULT_PRIORITY) if context is None else context.get(
                        var, DEFAULT_PRIORITY)
                    h = ho.h
                    if (level == h or h < 0) and level >= ho.top and sched.current <= level:
                        if h < 0:
                            ho.h = level
                            ho.above = 2 << level
                        ho.budget -= 1
                        if first_arg_ is _NO_ARG:
                            handle = uv_call_soon(callback, context=context)
                        elif not rest:
                            handle = uv_call_soon(callback, first_arg_, context=context)
                        else:
                            handle = uv_call_soon(callback, first_arg_, *rest, context=context)
                        if ho.check > level and not ho.budget & ho.mask:
                            uv_call_soon(checkpoint)
                        return handle
                args = () if first_arg_ is _NO_ARG else (first_arg_, *rest)
                return general(loop, callback, *args, context=context)
            args = () if first_arg_ is _NO_ARG else (first_arg_, *rest)
            if ho.saved > 0 and not sched.inbox and not sched.boosts:
                # The core holds work and a round is armed at the back for it
                # (or runs): hand off behind it, as the tail decides.
                level = get(DEFAULT_PRIORITY) if context is None else context.get(
                    var, DEFAULT_PRIORITY)
                h = ho.h
                if (level == h or h < 0) and level >= ho.top and sched.current <= level:
                    q = levels[level]
                    tail = ho.tail
                    if tail is _UNSET:  # the first behind the armed round
                        tail = q[-1] if q else None
                        if tail is not None and getattr(tail, "_aem_q", False):
                            tail = _UNSET  # a reader's (see _HandOff.tail)
                        ho.tail = tail
                    if not q or q[-1] is tail:
                        if h < 0:
                            ho.h = level
                            ho.above = 2 << level
                        ho.saved -= 1
                        handle = uv_call_soon(callback, *args, context=context)
                        if ho.check > level and not ho.saved & ho.mask:
                            uv_call_soon(checkpoint)
                        return handle
            # The core holds work: queue behind it (the class's method's
            # core path, inlined with _aem_arm's decision: the path of every
            # wakeup under load; the loop is open and not in debug mode while
            # this closure is installed).
            handle = fast_handle(loop, callback, args, context)
            if context is None or loop._aem_creating:
                push(handle)
            else:
                push_woken(handle)
            if sched._bits >= ho.above:  # more urgent than pending hand-offs
                if not loop._aem_front:
                    loop._aem_arm_front()
            elif not loop._aem_armed and not loop._aem_held:
                loop._aem_arm_back()
            return handle

        self.__dict__["call_soon"] = call_soon

    def _aem_count_handoffs(self, left: int) -> None:
        """Count the hand-offs made since the last count (the budget was
        ``base`` then and is *left* now) as dispatched at their level."""
        ho = self._aem_ho
        n = ho.base - left
        if n > 0 and ho.h >= 0:
            self._aem.dispatched[ho.h] += n
        ho.base = left

    def _aem_arm_back(self) -> None:
        """Queue a round at the back of uvloop's queue.  Until it runs, a
        callback is handed off only behind it, at the hand-offs' level and
        as the loop's call_soon decides (the rest of the budget is saved for
        that); the hand-offs made since the last count are counted as
        dispatched."""
        self._aem_armed = True
        ho = self._aem_ho
        self._aem_count_handoffs(ho.budget)
        ho.saved = ho.budget
        ho.budget = 0
        ho.tail = _UNSET
        _uv_call_soon(self, self._aem_dispatch)

    def _aem_schedule(self, callback: Callable[..., object], args: tuple[Any, ...],
                      context: contextvars.Context) -> Any:
        """Queue *callback* at the level of *context*, without inheritance
        (the events package activates handlers at their own priority)."""
        self._aem_check_open()
        if not self._aem_mixed:
            if context.get(PRIORITY_VAR, DEFAULT_PRIORITY) == DEFAULT_PRIORITY:
                return _uv_call_soon(self, callback, *args, context=context)
            self._aem_leave_fast_path()
        handle = fast_handle(self, callback, args, context)
        self._aem.push(handle)
        self._aem_arm()
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> Any:
        if not self._aem_mixed:
            ctx = contextvars.copy_context() if context is None else context
            if ctx.get(PRIORITY_VAR, DEFAULT_PRIORITY) == DEFAULT_PRIORITY:
                return _uv_call_soon_threadsafe(self, callback, *args, context=ctx)
            self._aem_leave_fast_path()
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")
        handle = AEMHandle(callback, args, self, context)  # type: ignore[arg-type]
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._aem.push_threadsafe(handle)
        ready = self._aem_ready
        if ready is not None:
            # Taken at the front of uvloop's queue, ahead of pending hand-offs
            # (it only queues the inbox in the core, where urgent work is run
            # by a front round and the rest waits behind the hand-offs);
            # uvloop's thread-safe entry then wakes libuv (uv_async_send).
            ready.appendleft(self._aem_inbox_h)
            _uv_call_soon_threadsafe(self, _noop)
        else:
            _uv_call_soon_threadsafe(self, self._aem_take_inbox)
        return handle

    def _aem_take_inbox(self) -> None:
        sched = self._aem
        if sched.inbox:
            sched.drain_inbox()
        if sched._bits:
            self._aem_arm()

    # -- readers and writers ---------------------------------------------------------
    #
    # Once the core dispatches (mixed mode), libuv's readiness of an fd only
    # queues its callback, coalesced while queued (Scheduler.push_ready), at
    # the priority of the context that added it.  Run directly by libuv, a
    # reader could fire again between two rounds while the callback that
    # removes it (e.g. a future's done callback) still waits in the queue:
    # stock uvloop runs every ready callback before it polls again.

    def _aem_io_add(self, add: Any, fd: Any, callback: Any, args: tuple[Any, ...]) -> None:
        if not self._aem_mixed:
            add(self, fd, callback, *args)
            return
        self._aem_check_open()
        handle = AEMHandle(callback, args, self, None)
        handle._aem_q = False
        sched = self._aem
        self._aem_note_io(handle._context.get(PRIORITY_VAR, DEFAULT_PRIORITY))

        def ready() -> None:
            if not handle._cancelled:
                sched.push_ready(handle)
                self._aem_arm()

        add(self, fd, ready)
        key = (add, _fileno(fd))
        old = self._aem_io.get(key)
        if old is not None:
            old.cancel()
        self._aem_io[key] = handle

    def _aem_io_remove(self, add: Any, remove: Any, fd: Any) -> bool:
        handle = self._aem_io.pop((add, _fileno(fd)), None)
        if handle is not None:
            handle.cancel()  # a queued activation is skipped
        return bool(remove(self, fd))

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._aem_io_add(_uv_add_reader, fd, callback, args)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self._aem_io_add(_uv_add_writer, fd, callback, args)

    def remove_reader(self, fd: Any) -> bool:
        return self._aem_io_remove(_uv_add_reader, _uv_remove_reader, fd)

    def remove_writer(self, fd: Any) -> bool:
        return self._aem_io_remove(_uv_add_writer, _uv_remove_writer, fd)

    def _aem_check_open(self) -> None:
        if self._aem_closed:
            raise RuntimeError("Event loop is closed")

    def _aem_check_thread(self) -> None:
        tid = self._aem_thread
        if tid is not None and tid != threading.get_ident():
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other "
                "than the current one"
            )

    # -- dispatch -----------------------------------------------------------------

    def _aem_arm(self) -> None:
        """Have uvloop run the next round (once, however often it is asked);
        ahead of pending hand-offs if the core holds more urgent work."""
        if self._aem._bits >= self._aem_ho.above:
            if not self._aem_front:
                self._aem_arm_front()
        elif not self._aem_armed and not self._aem_held:  # the feeder arms when done
            self._aem_arm_back()

    def _aem_arm_front(self) -> None:
        """Queue a round of the levels above the pending hand-offs at the
        front of uvloop's ready queue: it runs next, before them."""
        ready = self._aem_ready
        self._aem_front = True
        h = self._aem_front_h = _uv_call_soon(self, self._aem_dispatch_front)
        last = ready.pop()
        if last is not h:  # another thread's call_soon_threadsafe came between
            ready.append(last)
            ready.remove(h)
        ready.appendleft(h)

    def _aem_dispatch(self) -> None:
        ho = self._aem_ho
        if ho.tail is not _UNSET:
            self._aem_dispatch_lead()
            return
        # It counts as armed while it runs: a round for what it leaves (or
        # what its callbacks queue) is armed when it ends; until then nothing
        # is handed off behind one (it would wait for lower levels this round
        # still runs).
        ho.saved = 0
        floor = -1
        above = False  # the hand-offs before it above the default and all it would run
        if self._aem_held:  # held callbacks go first at their level
            floor = ho.h
        else:
            if self._aem_keep:  # armed before the hand-offs pending now
                self._aem_keep = False
                floor = ho.h
            else:  # every hand-off was queued before this round: all have run
                above = ho.h > DEFAULT_PRIORITY and ho.h >= self._aem._bits.bit_length()
                ho.h = -1
                ho.above = _NEVER
            if self._aem_ready is not None:
                ho.budget = ho.base = HANDOFF_MAX
                if above and self._aem_ready:
                    # What uvloop queued behind this round since it was armed,
                    # its own callbacks for those hand-offs included (a
                    # transport's connection_lost, which closes the socket
                    # after it), goes first.
                    _uv_call_soon(self, self._aem_dispatch)  # still armed
                    return
        sched = self._aem
        try:
            if sched.timers.n:
                sched.move_due_timers(_monotonic())
            sched.polls += 1
            sched.run_ready(floor)
        finally:
            self._aem_armed = False
            self._aem_after_round()

    def _aem_dispatch_lead(self) -> None:
        """The round with hand-offs queued behind it (see ``_HandOff.tail``):
        what is queued above their level, then the callbacks the core held at
        their level before them (up to the tail: the lead); more are handed
        off beside it as the tail allows.  If it ends before the lead is done (its slice spent with
        urgent I/O possible, or more urgent work took its share), the rest
        must still run before the hand-offs, after libuv has polled: uvloop's
        queue is held (see ``_aem_hold``) and the feeder runs them first.
        While it runs it counts as armed: a round for what it leaves is armed
        when it ends, behind what was handed off beside it."""
        ho = self._aem_ho
        h = ho.h
        sched = self._aem
        q = sched._levels[h]
        tail = ho.tail
        try:  # what runs at h before the hand-offs
            lead = 0 if tail is None else q.index(tail) + 1
        except ValueError:  # run already (by the round running when this one was armed)
            lead = 0
        # the epoch goes on: the hand-offs behind this round are pending
        self._aem_count_handoffs(ho.saved)
        try:
            if sched.timers.n:
                sched.move_due_timers(_monotonic())
            sched.polls += 1
            if sched._bits >= ho.above:
                sched.run_ready(h)
            if lead > 0:
                lead -= sched.run_ready(h - 1, lead)
                if lead > 0 and self._aem_hold(poll_first=True):
                    self._aem_lead_rest = min(lead, len(sched._levels[h]))
        finally:
            ho.tail = _UNSET
            if not self._aem_held:
                ho.budget = ho.saved
            ho.saved = 0
            self._aem_armed = False
            self._aem_after_round()

    def _aem_feed(self) -> None:
        """Release the next held callback after what is more urgent."""
        sched = self._aem
        now = _monotonic()
        if self._aem_feed_since < 0:
            self._aem_feed_since = now
        held = self._aem_held
        try:
            self._aem_run_above(now)
            if self._aem_lead_rest:
                # what the core queued ahead of the held callbacks runs first
                h = self._aem_ho.h
                took = sched.run_ready(h - 1, self._aem_lead_rest) or self._aem_age_lead(h, now)
                self._aem_lead_rest = min(self._aem_lead_rest - took, len(sched._levels[h]))
        finally:
            ready = self._aem_ready
            if self._aem_lead_rest and ready is not None:
                self._aem_feed_since = -1.0  # its slice spent: libuv polls first
                self._aem_hold_later(ready)
                ready.append(self._aem_feeder)
            elif held and ready is not None:
                if _monotonic() - self._aem_feed_since < sched.slice or self._aem_held_aged(now):
                    ready.appendleft(self._aem_feeder)  # in this pass: h, then the feeder
                    ready.appendleft(held.popleft())
                else:  # a slice spent: libuv polls before the next one
                    self._aem_feed_since = -1.0
                    self._aem_hold_later(ready)
                    ready.append(self._aem_feeder)
            else:
                held.clear()
                self._aem_feed_since = -1.0
                ho = self._aem_ho
                ho.h = -1
                ho.above = _NEVER
                if ready is not None and not self._aem_armed:
                    ho.budget = ho.base = HANDOFF_MAX
                self._aem_lead_rest = 0
                self._aem_after_round()

    def _aem_dispatch_front(self) -> None:
        """The round that preempts pending hand-offs: the levels above them.
        While it runs, ``_aem_front`` stays set: what it queues is its own
        to run or to re-arm for."""
        sched = self._aem
        now = _monotonic()
        if self._aem_front_since < 0:
            self._aem_front_since = now
        try:
            self._aem_run_above(now)
        finally:
            self._aem_front = False
            if sched._bits >= self._aem_ho.above:
                aging = sched.aging
                if aging is None or _monotonic() - self._aem_front_since < aging:
                    self._aem_arm_front()
                else:
                    # As aging would: the hand-offs (and libuv's poll) get their
                    # turn; no more preemption until the round behind them.
                    self._aem_front_since = -1.0
                    self._aem_ho.above = _NEVER
            else:
                self._aem_front_since = -1.0
            if sched._bits < self._aem_ho.above and (sched._bits or sched.inbox):
                self._aem_arm()
            if not self._aem_armed and not self._aem_held and self._aem_ho.h >= 0:
                # A round behind the hand-offs ends their epoch (else work at
                # another level would keep preempting them with fronts).
                self._aem_arm_back()
            self._aem_rearm_timer()

    def _aem_after_round(self) -> None:
        sched = self._aem
        if sched._bits or sched.inbox:
            self._aem_arm()
        self._aem_rearm_timer()

    def _aem_run_above(self, now: float) -> None:
        """Due timers, then a round of what is queued above the hand-offs."""
        sched = self._aem
        if sched.timers.n:
            sched.move_due_timers(now)
        if sched._bits >= self._aem_ho.above:
            sched.polls += 1
            sched.run_ready(self._aem_ho.h)

    def _aem_rearm_timer(self) -> None:
        timers = self._aem.timers
        # nothing to do unless a pending timer may fire before the armed time
        if timers.n and timers.soon < self._aem_timer_when:
            when = timers.next_when()
            if when is not None and when < self._aem_timer_when:
                self._aem_arm_timer(when)

    # -- timers: one libuv timer for the earliest core timer ---------------------

    def _aem_timer_added(self, timer: events.TimerHandle, level: int) -> None:
        if level != DEFAULT_PRIORITY and not self._aem_mixed:
            self._aem_leave_fast_path()
        if level > self._aem_ho.top:  # no hand-off below it while it pends
            self._aem_ho.top = level
        fire = timer._aem_fire  # type: ignore[attr-defined]
        if fire < self._aem_timer_when:
            self._aem_arm_timer(fire)

    def _aem_arm_timer(self, when: float) -> None:
        if self._aem_uv_timer is not None:
            self._aem_uv_timer.cancel()
        delay = min(max(0.0, when - _monotonic()), _MAX_ARM_SECONDS)
        # libuv counts whole milliseconds; round up so that it never fires
        # before the deadline has (by our clock) a chance to have passed.
        self._aem_uv_timer = _uv_call_later(
            self, math.ceil(delay * 1000.0) / 1000.0, self._aem_on_timer
        )
        self._aem_timer_when = when

    def _aem_on_timer(self) -> None:
        self._aem_uv_timer = None
        self._aem_timer_when = _INF
        sched = self._aem
        sched.move_due_timers(_monotonic())
        if sched._bits:
            self._aem_arm()
        when = sched.timers.next_when()
        if when is not None:
            self._aem_arm_timer(when)

    # -- subprocesses: the Popen-only ids (see uvspawn) -----------------------

    async def subprocess_exec(self, protocol_factory: Any, program: Any, *args: Any,
                              **kwargs: Any) -> Any:
        return await super().subprocess_exec(protocol_factory, program, *args,
                                             **with_posix_ids(kwargs))

    async def subprocess_shell(self, protocol_factory: Any, cmd: Any, **kwargs: Any) -> Any:
        return await super().subprocess_shell(protocol_factory, cmd, **with_posix_ids(kwargs))

    # -- lifecycle ------------------------------------------------------------------

    def _aem_leave_fast_path(self) -> None:
        """From now on every callback goes through the core (for good): also
        drops uvloop's call_soon bound on the loop.  What the fast path
        queued in uvloop's queue becomes a pending hand-off at the default
        level: more urgent work queued from now on runs before it."""
        hold = not self._aem_mixed and self._aem_ready is not None
        super()._aem_leave_fast_path()
        self.__dict__.pop("call_soon", None)
        if not self._aem_closed:
            self._aem_install_call_soon()
        if hold:
            ho = self._aem_ho
            ho.h = DEFAULT_PRIORITY
            ho.above = 2 << DEFAULT_PRIORITY
            tid = self._aem_thread
            if tid is None or tid == threading.get_ident():
                self._aem_hold()
            elif self._aem_armed:  # another thread: the queue is not ours to take
                self._aem_keep = True
                ho.saved = 0  # that round runs none of the core's level h

    def run_forever(self) -> None:
        self._aem_thread = threading.get_ident()
        try:
            super().run_forever()
        finally:
            self._aem_thread = None

    def close(self) -> None:
        if self._aem_sig is not None:  # before uvloop closes: a signal's kick uses it
            self._aem_sig.stop()
        super().close()
        self._aem_closed = True
        self.__dict__.pop("call_soon", None)  # a bound method of the loop: a cycle
        self._aem_ready = None
        self._aem_ho.budget = self._aem_ho.base = self._aem_ho.saved = 0
        self._aem_ho.above = _NEVER
        self._aem_held.clear()
        # bound methods of the loop: cycles
        self._aem_feeder = self._aem_noop = self._aem_inbox_h = self._aem_front_h = None
        self._aem_uv_timer = None
        self._aem_ho.check = -1
        self._aem_sig = self._aem_sig_h = self._aem_accept_h = self._aem_accept_after = None
        if self._aem_urgent is not None:
            self._aem_urgent.close()
            self._aem_urgent = None
            self._aem_urgent_fds.clear()
            self._aem.io_ready = None
        self._aem_timer_when = _INF
        self._aem.clear()
        self._aem.owner = None  # the loop: a cycle
