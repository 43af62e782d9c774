"""``python -m skyward``: the ``sky`` command."""

import sys

from ._cli import main

sys.exit(main())
