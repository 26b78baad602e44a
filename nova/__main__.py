"""`python -m nova`: the `nova` command."""

import sys

from nova.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
