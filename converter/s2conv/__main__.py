"""`python -m s2conv`: the `s2conv` command."""

import sys

from s2conv.cli import main

sys.exit(main())
