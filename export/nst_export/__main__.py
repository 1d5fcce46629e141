"""`python -m nst_export` is `nst-export`."""

import sys

from .cli import main

sys.exit(main())
