"""Framers for ``aem_loop.SocketData`` (``aem_loop.framers.Lines()``, ...).

See :mod:`aem_loop.events.framers`, where they live.
"""

from .events.framers import (
    BadMessage,
    Framer,
    FrameTooLarge,
    FramingError,
    HTTPHead,
    HTTPRequest,
    IncompleteMessage,
    LengthPrefixed,
    Lines,
    Raw,
)

__all__ = [
    "BadMessage",
    "FrameTooLarge",
    "Framer",
    "FramingError",
    "HTTPHead",
    "HTTPRequest",
    "IncompleteMessage",
    "LengthPrefixed",
    "Lines",
    "Raw",
]
