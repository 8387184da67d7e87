"""Starting and stopping a pool's zygote, and zygotes forked early (prestart)."""

from __future__ import annotations

import atexit
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

from . import _wire as w

__all__ = ["adopt_prestarted", "close_zygote", "fork_zygote", "prestart"]


def fork_zygote(preload: tuple[str, ...], initializer: Any,
                 initargs: tuple[Any, ...]) -> tuple[socket.socket, int]:
    zp, zc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = w.fork_clean()
    if pid == 0:  # pragma: no cover - runs in the zygote
        try:
            zp.close()
            w.zygote_main(zc, preload, initializer, initargs)
        finally:
            os._exit(0)
    zc.close()
    zp.setblocking(False)
    return zp, pid


def close_zygote(zp: socket.socket, pid: int) -> None:
    zp.close()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


_prestarted: list[tuple[socket.socket, int, tuple[str, ...]]] = []
_prestart_lock = threading.Lock()


def prestart(*, preload: Iterable[str] = ()) -> int:
    """Fork a capsule zygote now, for the next :class:`CapsulePool` to adopt.

    Call it early (at program start: before threads exist and before a loop
    runs), so that the template is small and clean, and so that creating the
    pool later costs no fork of the (by then larger) parent.  A pool adopts a
    prestarted zygote whose *preload* is the same.  Returns its pid; one not
    adopted is shut down at interpreter exit.
    """
    if isinstance(preload, str):
        raise TypeError("preload must be an iterable of module names, not a str")
    mods = tuple(preload)
    zp, pid = fork_zygote(mods, None, ())
    with _prestart_lock:
        if not _prestarted:
            atexit.register(_close_prestarted)
        _prestarted.append((zp, pid, mods))
    return pid


def adopt_prestarted(preload: tuple[str, ...]) -> tuple[Any, int]:
    with _prestart_lock:
        for i, (zp, pid, mods) in enumerate(_prestarted):
            if mods == preload:
                del _prestarted[i]
                return zp, pid
    return None, 0


def _close_prestarted() -> None:
    with _prestart_lock:
        left = list(_prestarted)
        _prestarted.clear()
    for zp, pid, _ in left:
        close_zygote(zp, pid)
