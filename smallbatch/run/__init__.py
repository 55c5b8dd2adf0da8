"""One cell's run: the LightningModule, the callbacks around it (result.json, progress lines),
norm diagnostics, and the W&B logger with its offline-file reader."""

from .module import SmallBatchModule, norm_display_name
from .result_writer import ResultWriter

__all__ = ["ResultWriter", "SmallBatchModule", "norm_display_name"]
