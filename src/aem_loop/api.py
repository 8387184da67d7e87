"""Making and running aem loops: new_event_loop, run, EventLoopPolicy, install."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .backends import loop_class
from .core.periodic import PeriodicJob, Ticker
from .core.priority import PRIORITY_VAR, check_priority

__all__ = ["EventLoopPolicy", "create_task", "install", "new_event_loop", "run"]

T = TypeVar("T")


def new_event_loop(*, backend: str = "selector", **options: Any) -> asyncio.AbstractEventLoop:
    """A new aem loop on *backend* ("selector" or "uvloop").

    Options (all backends): ``time_slice`` (seconds of dispatch between two
    I/O polls while work is queued), ``aging`` (seconds after which a starved
    level gets a callback; None for strict priority), ``strict`` (True: no
    aging), ``inherit`` (False: no priority inheritance).
    """
    loop: asyncio.AbstractEventLoop = loop_class(backend)(**options)
    return loop


def loop_factory(
    *, backend: str = "selector", **options: Any
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument factory for ``asyncio.Runner(loop_factory=...)``/anyio.

    Options are checked now, so a typo fails where it was written.
    """
    new_event_loop(backend=backend, **options).close()
    return functools.partial(new_event_loop, backend=backend, **options)


def run(
    main: Coroutine[Any, Any, T],
    *,
    backend: str = "selector",
    debug: bool | None = None,
    **options: Any,
) -> T:
    """Like ``asyncio.run(main)``, on an aem loop."""
    factory = functools.partial(new_event_loop, backend=backend, **options)
    try:
        loop = factory()
    except BaseException:
        if asyncio.iscoroutine(main):
            main.close()  # do not leave a "never awaited" warning behind
        raise
    with asyncio.Runner(debug=debug, loop_factory=lambda: loop) as runner:
        return runner.run(main)


def create_task(
    coro: Coroutine[Any, Any, T],
    *,
    name: str | None = None,
    context: contextvars.Context | None = None,
    priority: int | None = None,
) -> asyncio.Task[T]:
    """``asyncio.create_task`` with a priority; works on any running loop."""
    loop = asyncio.get_running_loop()
    if priority is not None:
        try:
            p = check_priority(priority)
        except (TypeError, ValueError):
            coro.close()  # it can never run; no "never awaited" warning
            raise
        context = contextvars.copy_context() if context is None else context.copy()
        context.run(PRIORITY_VAR.set, p)
    return loop.create_task(coro, name=name, context=context)


def _policy_base() -> type:
    # The Unix default policy (it provides child watchers on 3.11), found
    # without touching the names that 3.14 deprecates.
    import asyncio.events as ev
    import asyncio.unix_events as ue

    for mod, name in (
        (ue, "_UnixDefaultEventLoopPolicy"),
        (ev, "_BaseDefaultEventLoopPolicy"),
        (ev, "BaseDefaultEventLoopPolicy"),
    ):
        base = getattr(mod, name, None)
        if base is not None:
            return base  # type: ignore[no-any-return]
    raise RuntimeError("no asyncio event loop policy base class found")


class EventLoopPolicy(_policy_base()):  # type: ignore[misc]
    """An asyncio policy whose loops are aem loops (prefer ``loop_factory``)."""

    def __init__(self, *, backend: str = "selector", **options: Any) -> None:
        super().__init__()
        self._aem_factory = loop_factory(backend=backend, **options)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._aem_factory()

    def _loop_factory(self) -> asyncio.AbstractEventLoop:  # used by some bases
        return self._aem_factory()


def install(*, backend: str = "selector", **options: Any) -> EventLoopPolicy:
    """Make aem the loop of ``asyncio.run`` and friends (the policy path)."""
    policy = EventLoopPolicy(backend=backend, **options)
    asyncio.set_event_loop_policy(policy)
    return policy


def every(
    interval: float,
    callback: Callable[..., Any] | None = None,
    *args: Any,
    priority: int | None = None,
    missed: str = "skip",
    stop_on_error: bool = False,
) -> PeriodicJob | Ticker:
    """A periodic job on the running loop, or, without *callback*, a ticker.

    ``aem_loop.every(0.5, fn, x)`` is ``loop.call_every(0.5, fn, x)`` (a
    :class:`PeriodicJob`); ``async for tick in aem_loop.every(0.5): ...``
    iterates over the same drift-free schedule.  Both work on any asyncio
    loop; priorities take effect on an aem_loop loop.
    """
    loop = asyncio.get_running_loop()
    if callback is None:
        if args:
            raise TypeError("every(): positional arguments given without a callback")
        if stop_on_error:
            raise TypeError("every(): stop_on_error applies to a callback, not a ticker")
        return Ticker(loop, interval, priority=priority, missed=missed)
    return PeriodicJob(
        loop, interval, callback, args,
        priority=priority, missed=missed, stop_on_error=stop_on_error,
    )


def cloner(handler: Callable[..., Any], **kwargs: Any) -> Any:
    """``loop.cloner(handler, ...)`` on the running loop (a :class:`ClonerEvent`).

    Works on any asyncio loop: aem loops have the method, others get the same
    object built here.
    """
    from .capsules.cloner import ClonerEvent

    loop = asyncio.get_running_loop()
    if hasattr(loop, "cloner"):
        return loop.cloner(handler, **kwargs)
    return ClonerEvent(loop, handler, **kwargs)
