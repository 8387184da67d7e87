"""Loop options given as text: ``NAME=VALUE`` on the command line, or the
``AEM_LOOP_OPTIONS`` environment variable (``"time_slice=0.0005,aging=none"``)
for the server integrations (gunicorn workers, uvicorn's ``--loop``)."""

from __future__ import annotations

import os
from typing import Any

ENV = "AEM_LOOP_OPTIONS"


def parse_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``: VALUE true/false/none, else a number."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    low = raw.strip().lower()
    if low in ("true", "yes", "on"):
        return name, True
    if low in ("false", "no", "off"):
        return name, False
    if low == "none":
        return name, None
    try:
        return name, float(raw)
    except ValueError:
        raise ValueError(f"option {name}: {raw!r} is not a number, true, false or none") from None


def env_options() -> dict[str, Any]:
    """The loop options in ``AEM_LOOP_OPTIONS`` (comma-separated NAME=VALUE)."""
    text = os.environ.get(ENV, "")
    try:
        return dict(parse_option(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise ValueError(f"{ENV}: {exc}") from None
