"""`python -m snncompile ...`: the same as the `snncompile` command."""

import sys

from .cli import main

sys.exit(main())
