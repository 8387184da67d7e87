"""uvicorn on aem (uvicorn >= 0.36, whose ``--loop`` takes a loop factory)::

    uvicorn app:app --loop aem_loop.uvicorn:selector
    uvicorn app:app --loop aem_loop.uvicorn:uvloop

or ``uvicorn.run(app, loop="aem_loop.uvicorn:selector")``.  Loop options
come from the ``AEM_LOOP_OPTIONS`` environment variable
(``"time_slice=0.0005,aging=none"``).
"""

from __future__ import annotations

import asyncio

from ._options import env_options
from .api import new_event_loop

__all__ = ["selector", "uvloop"]


def selector() -> asyncio.AbstractEventLoop:
    """A loop on the selector backend, for ``--loop aem_loop.uvicorn:selector``."""
    return new_event_loop(backend="selector", **env_options())


def uvloop() -> asyncio.AbstractEventLoop:
    """A loop on the uvloop backend, for ``--loop aem_loop.uvicorn:uvloop``."""
    return new_event_loop(backend="uvloop", **env_options())
