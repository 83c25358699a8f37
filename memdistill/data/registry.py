"""``load_dataset``: one entry point from a name or a path to a :class:`Dataset`."""

from __future__ import annotations

from pathlib import Path

from memdistill.data.images import IMAGES, load_image_folder, load_image_set, load_npz, npz_dims
from memdistill.data.tabular import BUNDLED, PAPER_RANDOM_STATE, SYNTHETIC, Dataset, load_tabular


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    label: str | None = None,
    test_size: float = 1 / 3,
    seed: int = PAPER_RANDOM_STATE,
) -> Dataset:
    """Load a data set by name or path, split and standardised on its train part.

    Args:
      name: a tabular set: ``"moons"`` (the paper's: 1,500 points, noise 0.05, random_state 8),
        ``"circles"``, ``"blobs"`` (3 classes), a bundled scikit-learn set (``"breast_cancer"``,
        ``"iris"``, ``"wine"``, ``"digits"``: 64 features); an image set (:data:`IMAGES`):
        ``"digits-images"`` (bundled, [1, 8, 8]), ``"mnist"``, ``"fashion-mnist"`` ([1, 28, 28]),
        ``"cifar10"``, ``"cifar100"`` ([3, 32, 32]); or a path: a CSV file (with ``label``), a
        ``.npz`` file (arrays ``x``, ``y``, optional ``x_test``, ``y_test``) or a folder in
        ImageFolder layout (one subfolder of PNG/JPEG images per class).
      root: the folder of the mnist/fashion-mnist/cifar files (searched in ``root/<name>``, the
        usual extracted subfolders, then ``root``); None: the environment variable ``MEMDISTILL_DATA``.
      label: the CSV column holding the labels (required for CSV, unused otherwise).
      test_size: fraction of the points in the test part of a stratified split (the paper's: 1/3).
        Unused where the data come split (mnist, cifar, ``x_test`` in a .npz, ``train/`` + ``test/``).
      seed: random_state of the synthetic generators and of the split.

    Returns:
      The :class:`Dataset`: inputs [N, F] (tabular, standardised per feature) or [N, C, H, W]
      (images, standardised per channel). Two moons: 1,000 train and 500 test points.
    """
    if name in SYNTHETIC or name in BUNDLED:
        return load_tabular(name, label=label, test_size=test_size, seed=seed)
    if name in IMAGES:
        return load_image_set(name, root=root, test_size=test_size, seed=seed)
    path = Path(name)
    if path.suffix.lower() == ".npz":
        return load_npz(path, test_size=test_size, seed=seed)
    if path.is_dir():
        return load_image_folder(path, test_size=test_size, seed=seed)
    if path.suffix.lower() == ".csv" or path.is_file():
        return load_tabular(name, label=label, test_size=test_size, seed=seed)
    raise ValueError(
        f"load_dataset: unknown data set {name!r}; expected one of {list(SYNTHETIC + BUNDLED + IMAGES)} "
        "or the path of a CSV file, a .npz file or an ImageFolder folder"
    )


def is_image_data(name: str | Path) -> bool:
    """Whether :func:`load_dataset` reads ``name`` as images, decided without loading it: the image
    sets and folders are; a .npz file is when its array x has 3 or 4 dimensions (from its header);
    the tabular sets and CSV files are not, nor a path that does not exist."""
    if str(name) in IMAGES:
        return True
    if str(name) in SYNTHETIC or str(name) in BUNDLED:
        return False
    path = Path(name)
    if path.suffix.lower() == ".npz":
        return npz_dims(path) in (3, 4)
    return path.is_dir()
