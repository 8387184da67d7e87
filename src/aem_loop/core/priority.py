"""Priorities: names, validation, and the context variable that carries them.

A priority is an int in 0..99, higher is more urgent.  It travels in the
``contextvars`` context, so everything that captures a context when it is
created (callbacks, tasks, timers, readers, servers and the connections a
server accepts) carries the priority that was current at that moment.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import threading
import weakref
from asyncio import events as _events
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "ABOVE_BITS",
    "CLEAR_BITS",
    "JOB_LEVEL",
    "LEVEL_BITS",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "NLEVELS",
    "NQUEUES",
    "Priority",
    "check_priority",
    "current_priority",
    "effective_priority",
    "on_first_priority",
    "priorities_used",
    "priority",
    "set_priority",
]

MIN_PRIORITY = 0
MAX_PRIORITY = 99
NLEVELS = MAX_PRIORITY + 1
# AEM's job level: above every handler level.  The jobs of events (and the
# readers of connections whose priority is decided from their data) run
# here: they read and check what arrived, then activate a handler at its
# own priority.  Never a user priority (check_priority refuses it); the
# ready queue has one more level for it.
JOB_LEVEL = NLEVELS
NQUEUES = NLEVELS + 1
# 1 << level for every level, made once: levels above 30 need a two-digit int,
# and building one on every push was a measurable share of the push.
LEVEL_BITS = tuple(1 << i for i in range(NQUEUES))
# A bitmap of levels reaches ABOVE_BITS[level] when a level above it is set;
# ``bits & CLEAR_BITS[level]`` clears the level's bit (a positive mask: no
# complement to build).  Made once for the same reason.
ABOVE_BITS = tuple(2 << i for i in range(NQUEUES))
CLEAR_BITS = tuple(((1 << NQUEUES) - 1) ^ (1 << i) for i in range(NQUEUES))


class Priority(enum.IntEnum):
    """Named priority levels; any int in 0..99 is accepted where these are."""

    IDLE = 0
    LOW = 25
    NORMAL = 50
    HIGH = 75
    CRITICAL = 99


DEFAULT_PRIORITY = int(Priority.NORMAL)

# The one variable the scheduler reads.  Its value is always a plain int so
# that the hot path (``ctx.get(PRIORITY_VAR, DEFAULT)``) needs no conversion.
PRIORITY_VAR: contextvars.ContextVar[int] = contextvars.ContextVar(
    "aem_loop.priority"
)


class _Use:
    """Whether this process has given any context a priority other than the
    default, and what to tell the moment it first does."""

    used = False
    # objects with an _aem_priority_used() method (uvloop backend loops on
    # their fast path), told once
    watchers: weakref.WeakSet[Any] = weakref.WeakSet()
    # held to mark or to watch, so that a loop made in one thread while the
    # first priority is checked in another is either told or starts off its
    # fast path (the check of `used` on the hot path takes no lock)
    lock = threading.Lock()


def priorities_used() -> bool:
    """True once any priority other than the default has been checked (every
    way of giving a context a priority checks it first), in this process."""
    return _Use.used


def on_first_priority(obj: Any) -> None:
    """Call ``obj._aem_priority_used()`` when a non-default priority is first
    checked (at once if that happened already)."""
    with _Use.lock:
        if not _Use.used:
            _Use.watchers.add(obj)
            return
    obj._aem_priority_used()


def _first_use() -> None:
    with _Use.lock:
        if _Use.used:
            return
        _Use.used = True
        watchers = list(_Use.watchers)
        _Use.watchers.clear()
    for w in watchers:
        w._aem_priority_used()


def plain_number(value: object) -> int | float | None:
    """*value*'s number as a plain int or float (a subclass's own comparisons
    and conversions are not trusted: they could say anything), or None if it
    is not a number (bool included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if type(value) is int else int.__index__(value)
    if isinstance(value, float):
        return value if type(value) is float else float.__float__(value)
    return None


def seconds(value: object, what: str, *, low: float = 0.0, low_ok: bool = False) -> float:
    """A number of seconds: finite and above *low* (or equal to it if
    *low_ok*); TypeError/ValueError naming *what* otherwise."""
    v = plain_number(value)
    if v is None:
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    if v != v:
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    if not ((v >= low) if low_ok else (v > low)) or v == float("inf"):
        bound = f">= {low:g}" if low_ok else f"> {low:g}"
        raise ValueError(f"{what} must be {bound} seconds and finite, got {value!r}")
    return float(v)


def boolean(value: object, what: str) -> bool:
    """*value* if it is a bool; TypeError naming *what* otherwise ("no" or 0
    are not taken for False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {value!r}")
    return value


def check_priority(value: object, what: str = "priority") -> int:
    """Return *value* as an int priority, or raise TypeError/ValueError.

    Every path that gives a context a priority checks it here first, so a
    valid non-default value marks the process as using priorities
    (:func:`priorities_used`; both backends leave their fast path).
    """
    if not (type(value) is int and MIN_PRIORITY <= value <= MAX_PRIORITY):
        # not a plain int in range (the usual case skips all of this)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{what} must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}, "
                f"not {type(value).__name__} {value!r}"
            )
        # an int subclass (an IntEnum such as Priority.HIGH): its value, not
        # its own comparisons, which could lie
        plain = int.__index__(value)
        if not MIN_PRIORITY <= plain <= MAX_PRIORITY:
            raise ValueError(
                f"{what} must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {plain!r}"
            )
        value = plain
    if value != DEFAULT_PRIORITY and not _Use.used:
        _first_use()
    return value


def context_at(cache: dict[int, contextvars.Context], base: contextvars.Context,
               level: int) -> contextvars.Context:
    """A copy of *base* whose priority is *level*, made once per level and
    kept in *cache* (what a connection or an event runs at when the data
    raise it)."""
    ctx = cache.get(level)
    if ctx is None:
        ctx = cache[level] = base.copy()
        ctx.run(PRIORITY_VAR.set, level)
    return ctx


def current_priority() -> int:
    """The priority of the code that is running now (NORMAL by default)."""
    return PRIORITY_VAR.get(DEFAULT_PRIORITY)


def effective_priority() -> int:
    """The level the running callback is dispatched at.

    Equal to :func:`current_priority` except while a step runs raised by
    inheritance (woken by a more urgent event) or by a lock boost.  Outside
    an aem loop it is :func:`current_priority`.
    """
    sched = getattr(_events._get_running_loop(), "_aem", None)
    if sched is not None and sched.current >= 0:
        return int(sched.current)
    return current_priority()


def set_priority(value: int) -> None:
    """Change the current priority from now on.

    Inside a task this changes the task's priority for its following steps
    (a task runs in its own context); the task's creator is not affected.
    """
    PRIORITY_VAR.set(check_priority(value))


F = TypeVar("F", bound=Callable[..., Any])


class priority:
    """Run a block, or every call of a coroutine function, at priority *p*.

    As a context manager::

        with aem_loop.priority(aem_loop.Priority.HIGH):
            loop.call_soon(cb)          # runs at HIGH
            asyncio.create_task(c())    # the task runs at HIGH
            await loop.create_server(...)  # accepted connections run at HIGH

    As a decorator on a coroutine function (or a plain function), each call
    runs at *p*.
    """

    __slots__ = ("_tokens", "value")

    def __init__(self, p: int) -> None:
        self.value = check_priority(p)
        self._tokens: list[contextvars.Token[int]] = []

    def __enter__(self) -> int:
        self._tokens.append(PRIORITY_VAR.set(self.value))
        return self.value

    def __exit__(self, *exc: object) -> None:
        PRIORITY_VAR.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        value = self.value
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def coro_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = PRIORITY_VAR.set(value)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    PRIORITY_VAR.reset(token)

            return coro_wrapper  # type: ignore[return-value]
        if not callable(fn):
            raise TypeError(f"priority() decorates a callable, not {fn!r}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = PRIORITY_VAR.set(value)
            try:
                return fn(*args, **kwargs)
            finally:
                PRIORITY_VAR.reset(token)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"aem_loop.priority({self.value})"
