"""``python -m memdistill``: the same as the ``memdistill`` console script."""

import sys

from memdistill.cli import main

sys.exit(main())
