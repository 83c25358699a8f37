"""Data sets: every loader returns a standardised train/test :class:`Dataset`.

Lives here: the :class:`Dataset` (inputs [N, F] or images [N, C, H, W]), the paper's two moons,
other synthetic sets, scikit-learn's bundled tables and CSV files (``tabular``); image sets:
scikit-learn's 8×8 digits, MNIST, Fashion-MNIST, CIFAR-10/100 binaries, ImageFolder folders and
.npz files (``images``); :func:`load_dataset`, which picks the loader from a name or a path
(``registry``). A new data set goes here. Nothing is downloaded and nothing is unpickled.

May import: ``memdistill.atomic``, torch, numpy, scikit-learn and Pillow (both lazily, inside
functions). Nothing above it (distill, apps) and not the engine.
"""
from memdistill.data.images import IMAGES, DataNotFoundError, split_images
from memdistill.data.registry import is_image_data, load_dataset
from memdistill.data.tabular import BUNDLED, SYNTHETIC, Dataset, split_dataset

__all__ = [
    "BUNDLED", "IMAGES", "SYNTHETIC", "DataNotFoundError", "Dataset", "is_image_data", "load_dataset", "split_dataset",
    "split_images",
]
