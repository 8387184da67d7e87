"""``python -m aem_loop.httpd``: the same as ``aem-loop httpd``."""

import sys

from . import main

sys.exit(main(prog="python -m aem_loop.httpd"))
