"""``python -m tidemq.cli``: the same as the ``tidemq`` script."""

import sys

from . import main

sys.exit(main())
