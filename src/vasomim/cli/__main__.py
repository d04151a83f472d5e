"""``python -m vasomim.cli`` (and ``torchrun -m vasomim.cli``): the ``vasomim`` command."""

import sys

from vasomim.cli import main

sys.exit(main())
