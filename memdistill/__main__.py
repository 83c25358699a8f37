"""``python -m memdistill``: the same as the ``memdistill`` console script."""

import sys

from memdistill.apps.cli import main

sys.exit(main())
