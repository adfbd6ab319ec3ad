"""``python -m tidemq.server``: the same as ``tidemq serve``."""

import sys

from ._main import main

sys.exit(main())
