"""smallbatch: how does each normalization layer behave as the per-device batch shrinks?"""

__version__ = "0.1.0"
