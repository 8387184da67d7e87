"""AEMhttpd from a program: serve a directory, urgent paths first.

    python examples/aemhttpd.py [DIR] [--port 8080] [--backend selector|uvloop]

then, in another terminal::

    curl -i http://127.0.0.1:8080/aemhttpd.py        # 200, the file
    curl -i http://127.0.0.1:8080/missing            # 404
    curl -i --path-as-is http://127.0.0.1:8080/../README.md   # 403: outside DIR

Requests under /urgent/ are classified HIGH from their request line, so
they are read, answered and sent before a backlog of other requests.  Each
response is logged with the priority it was answered at.  Ctrl-C (or
SIGTERM) stops the server gracefully: responses under way are finished.
The same server without code: ``aem-loop httpd DIR --port 8080``.
"""

from __future__ import annotations

import argparse
import os
import sys

import aem_loop
from aem_loop import Priority
from aem_loop.httpd import serve


def log(method: str, target: str, status: int, size: int, priority: int) -> None:
    print(f"{method} {target} -> {status} ({size} bytes) at priority {priority}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend", default="selector", choices=("selector", "uvloop"))
    a = ap.parse_args()
    aem_loop.run(serve(a.root, port=a.port, routes={"/urgent/": Priority.HIGH},
                       access_log=log), backend=a.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
