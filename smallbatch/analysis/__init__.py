"""The analysis side: reports (tables, plots, W&B summary run and workspace) from the
``result.json`` files of runs and grids, and ``smallbatch bench``."""
