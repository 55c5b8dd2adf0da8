"""``python -m smallbatch.cli``: the ``smallbatch`` command (grid cells run this way)."""

import sys

from . import main

sys.exit(main())
