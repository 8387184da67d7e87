"""The core imports no I/O code and no backend (STYLE.md, practice 1)."""

import ast
import pathlib

import aem_loop.core

CORE = pathlib.Path(aem_loop.core.__file__).parent
FORBIDDEN = ("selectors", "socket", "ssl", "uvloop", "aem_loop.backends", "asyncio.selector_events",
             "asyncio.unix_events", "subprocess")


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: must stay inside core
                yield "." * node.level + (node.module or "")
            else:
                yield node.module or ""
                yield from (f"{node.module}.{a.name}" for a in node.names)


def test_core_imports_no_io_and_no_backend():
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        for name in _imports(f):
            assert not name.startswith(".."), f"{f.name} reaches outside core: {name}"
            for bad in FORBIDDEN:
                assert name != bad and not name.startswith(bad + "."), f"{f.name} imports {name}"


def test_one_dispatch_site():
    """Only the scheduler calls handles (handle._run(), or its callback in its context)."""
    src = pathlib.Path(aem_loop.__file__).parent
    for call in ("._run()", "._context.run("):
        callers = {
            p.relative_to(src).as_posix() for p in src.rglob("*.py") if call in p.read_text()
        }
        assert callers == {"core/scheduler.py"}, call
