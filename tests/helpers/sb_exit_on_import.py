"""A plugin module whose import calls sys.exit (issue 35, item 8)."""

import sys

from torch import nn

sys.exit(3)


class ExitNorm(nn.BatchNorm2d):
    pass
