"""gunicorn workers for aiohttp apps on aem (aiohttp's own workers, whose
loop is an aem loop)::

    gunicorn app:app -k aem_loop.gunicorn.AEMWebWorker        # selector backend
    gunicorn app:app -k aem_loop.gunicorn.AEMUVLoopWebWorker  # uvloop backend

Loop options come from the ``AEM_LOOP_OPTIONS`` environment variable
(``"time_slice=0.0005,aging=none"``).  Needs gunicorn and aiohttp.
"""

from __future__ import annotations

import asyncio
import warnings

from aiohttp.worker import GunicornWebWorker

from ._options import env_options
from .api import EventLoopPolicy

__all__ = ["AEMUVLoopWebWorker", "AEMWebWorker"]


class AEMWebWorker(GunicornWebWorker):  # type: ignore[misc]
    """aiohttp's gunicorn worker on an aem loop (selector backend)."""

    aem_backend = "selector"

    def init_process(self) -> None:
        # As aiohttp's uvloop worker: the loop aiohttp's worker makes after
        # the fork comes from the policy (the worker has no loop factory).
        policy = EventLoopPolicy(backend=self.aem_backend, **env_options())
        with warnings.catch_warnings():  # 3.14 deprecates policies
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(policy)
        super().init_process()


class AEMUVLoopWebWorker(AEMWebWorker):
    """aiohttp's gunicorn worker on an aem loop (uvloop backend)."""

    aem_backend = "uvloop"
