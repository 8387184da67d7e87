"""I/O backends.  Each is a loop class; the core never imports this package."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BACKENDS", "loop_class"]

# name -> (module, class).  Explicit, so the set of backends is visible here.
BACKENDS: dict[str, tuple[str, str]] = {
    "selector": ("aem_loop.backends.selector", "SelectorLoop"),
    "uvloop": ("aem_loop.backends.uv", "UVLoop"),
}


def loop_class(backend: str) -> Any:
    """The loop class of *backend*; ValueError names the known ones."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, not {type(backend).__name__}")
    try:
        module, cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown aem_loop backend {backend!r}; known backends: "
            f"{', '.join(sorted(BACKENDS))}"
        ) from None
    if backend == "uvloop":
        try:
            importlib.import_module("uvloop")
        except ImportError as exc:
            raise ImportError(
                "aem_loop backend 'uvloop' needs the uvloop package: "
                "pip install 'aem-loop[uvloop]'"
            ) from exc
    return getattr(importlib.import_module(module), cls)
