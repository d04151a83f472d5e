"""``python -m vasomim``: the ``vasomim`` command."""

import sys

from vasomim.cli import main

sys.exit(main())
