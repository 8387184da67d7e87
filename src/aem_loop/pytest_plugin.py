"""pytest plugin: run a test suite's pytest-asyncio tests on aem loops.

Installed with aem-loop (entry point ``pytest11``); it does nothing unless
asked.  ``pytest --aem-loop=selector`` (or ``uvloop``, or ``all`` for both)
makes every pytest-asyncio test run on aem loops; the same can be set in the
ini file as ``aem_loop = selector``.  It uses pytest-asyncio's
``pytest_asyncio_loop_factories`` hook (pytest-asyncio >= 1.5), so no event
loop policy is involved.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

_CHOICES = ("selector", "uvloop", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aem_loop")
    group.addoption(
        "--aem-loop",
        dest="aem_loop",
        default=None,
        choices=_CHOICES,
        help="run pytest-asyncio tests on aem loops: selector, uvloop or all",
    )
    parser.addini("aem_loop", help="default for --aem-loop", default="")


def _backends(config: pytest.Config) -> list[str]:
    value = config.getoption("aem_loop") or config.getini("aem_loop") or ""
    if not value:
        return []
    if value not in _CHOICES:
        raise pytest.UsageError(
            f"aem_loop must be one of {', '.join(_CHOICES)}, got {value!r}"
        )
    return ["selector", "uvloop"] if value == "all" else [value]


class _Factories:
    """Registered only when asked (see pytest_configure): pytest-asyncio's
    ``pytest_asyncio_loop_factories`` is a first-result hook that must
    return a non-empty mapping, so an implementation that answers None
    would break every other suite in the environment."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(self, config: pytest.Config, item: Any) -> Any:
        import aem_loop

        return {
            f"aem-{n}": functools.partial(aem_loop.new_event_loop, backend=n)
            for n in self.names
        }


def pytest_configure(config: pytest.Config) -> None:
    names = _backends(config)
    if names:
        config.pluginmanager.register(_Factories(names), "aem_loop_factories")
