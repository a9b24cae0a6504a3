"""``python -m tiler``: the same as the ``tileproc`` command."""

import sys

from tiler.cli import main

if __name__ == "__main__":
    sys.exit(main())
