"""`python -m s2rt` is the `s2rt` command."""

import sys

from s2rt.cli import main

sys.exit(main())
