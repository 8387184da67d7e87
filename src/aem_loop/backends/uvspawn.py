"""``user``, ``group``, ``extra_groups``, ``umask`` and ``process_group`` for
the uvloop backend's subprocesses.

Stock asyncio passes them to :class:`subprocess.Popen`; uvloop's spawn
rejects them ("unexpected kwargs"), so libraries that skip them on uvloop
would fail on an aem loop.  The values are checked and names resolved in the
parent as Popen does (same exceptions), then applied in the child by a
``preexec_fn`` (which uvloop supports), in Popen's order, before the
caller's own ``preexec_fn``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["with_posix_ids"]

_KEYS = ("user", "group", "extra_groups", "umask", "process_group")


def _id(value: Any, what: str, lookup: Callable[[str], Any], field: str) -> int:
    if isinstance(value, str):
        return int(getattr(lookup(value), field))
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} ID cannot be negative, got {value}")
        return int.__index__(value)
    raise TypeError(f"{what} must be a string or an integer")


def with_posix_ids(kwargs: dict[str, Any]) -> dict[str, Any]:
    """*kwargs* for uvloop's spawn: the Popen-only ids turned into a preexec_fn."""
    if not any(kwargs.get(k) is not None for k in _KEYS):
        for k in _KEYS:  # explicit None (or umask -1): Popen's defaults
            kwargs.pop(k, None)
        return kwargs
    import grp
    import pwd

    kw = dict(kwargs)
    user, group = kw.pop("user", None), kw.pop("group", None)
    extra, umask = kw.pop("extra_groups", None), kw.pop("umask", -1)
    pgroup = kw.pop("process_group", None)
    uid = None if user is None else _id(user, "User", pwd.getpwnam, "pw_uid")
    gid = None if group is None else _id(group, "Group", grp.getgrnam, "gr_gid")
    gids = None
    if extra is not None:
        gids = []
        for g in extra:
            if not isinstance(g, (str, int)) or isinstance(g, bool):
                raise TypeError("Items in extra_groups must be a string or integer")
            gids.append(_id(g, "Group", grp.getgrnam, "gr_gid"))
    if umask is None:
        umask = -1
    if not isinstance(umask, int) or isinstance(umask, bool):
        raise TypeError(f"umask must be an int, not {umask!r}")
    if pgroup is not None and (not isinstance(pgroup, int) or pgroup < 0):
        raise ValueError(f"process_group must be an int >= 0, not {pgroup!r}")
    then = kw.pop("preexec_fn", None)

    def preexec() -> None:  # in the child, before exec
        if umask >= 0:
            os.umask(umask)
        if pgroup is not None:
            os.setpgid(0, pgroup)
        if gids is not None:
            os.setgroups(gids)
        if gid is not None:
            os.setregid(gid, gid)
        if uid is not None:
            os.setreuid(uid, uid)
        if then is not None:
            then()

    kw["preexec_fn"] = preexec
    return kw
