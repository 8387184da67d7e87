"""The errors a capsule pool reports, and how a capsule's exception comes back."""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Any

from ._wire import describe_status

__all__ = ["BrokenCapsulePool", "CapsuleDied", "CapsuleError", "RemoteTraceback"]


class CapsuleError(Exception):
    """Base class of the pool's errors."""


class CapsuleDied(CapsuleError):
    """The capsule running a call died before it answered.

    ``pid``: the capsule's process id; ``status``: its raw wait status (None
    if the zygote could not report it); ``exitcode`` / ``signal``: decoded.
    """

    def __init__(self, pid: int, status: int | None, what: str) -> None:
        self.pid = pid
        self.status = status
        self.exitcode: int | None = None
        self.signal: int | None = None
        if status is not None:
            if os.WIFEXITED(status):
                self.exitcode = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                self.signal = os.WTERMSIG(status)
        how = describe_status(status) if status is not None else "died (status unknown)"
        super().__init__(f"capsule {pid} {how} while running {what}")


class BrokenCapsulePool(CapsuleError, cf.BrokenExecutor):
    """The pool cannot run calls: shut down, its zygote died, or its initializer failed."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a capsule (its ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def remote_error(payload: tuple[Any, str, str], what: str) -> BaseException:
    """The exception a capsule reported, its traceback text as __cause__."""
    exc, tb, text = payload
    if exc is None:  # the exception itself could not be pickled
        exc = CapsuleError(f"{what} raised {text} (not picklable)")
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc  # type: ignore[no-any-return]


def describe(fn: Any) -> str:
    """How errors name a function."""
    return getattr(fn, "__qualname__", None) or repr(fn)
