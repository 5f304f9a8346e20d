"""``python -m hooks_mm.cli``: the ``hooks-mm`` command."""

import sys

from hooks_mm.cli import main

sys.exit(main())
