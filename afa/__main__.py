"""``python -m afa``: the ``afa`` command."""

import sys

from afa.cli import main

if __name__ == "__main__":
    sys.exit(main())
