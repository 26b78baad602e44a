"""`python -m nova`: the `nova` command."""

import sys

from nova.cli import main

sys.exit(main())
