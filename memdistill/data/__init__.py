"""Data sets: every loader returns a standardised train/test :class:`Dataset`.

Lives here: the paper's two moons and other synthetic sets, scikit-learn's bundled tables and
CSV files (``tabular``). A new data set goes here.

May import: ``memdistill.atomic``, torch, numpy, scikit-learn. Nothing above it (distill,
apps) and not the engine.
"""
from memdistill.data.tabular import BUNDLED, SYNTHETIC, Dataset, load_dataset, split_dataset

__all__ = ["BUNDLED", "SYNTHETIC", "Dataset", "load_dataset", "split_dataset"]
