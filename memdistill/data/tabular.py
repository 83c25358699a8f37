"""Data sets for distillation: the paper's two moons, other synthetic sets, scikit-learn's
bundled tabular sets and CSV files.

Every loader returns a :class:`Dataset`: a stratified train/test split whose features are
standardised with the mean and standard deviation of the train part,
``x = (x_raw − mean_train) / std_train``, and whose labels are class ids ``0 … C−1``.
Nothing is downloaded: the scikit-learn sets are the ``load_*`` ones shipped in the package.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SYNTHETIC = ("moons", "circles", "blobs")
BUNDLED = ("breast_cancer", "iris", "wine", "digits")
PAPER_SAMPLES = 1500
PAPER_NOISE = 0.05
PAPER_RANDOM_STATE = 8


@dataclass(frozen=True)
class Dataset:
    """A standardised, stratified train/test split.

    Attributes:
      name: what it was loaded from (a data set name or a CSV path).
      x_train: float32 tensor [N_train, F]; x_test: float32 tensor [N_test, F].
      y_train: int64 tensor [N_train] of class ids 0 … C−1; y_test: int64 tensor [N_test].
      classes: C, the number of classes (≥ 2).
      class_names: the original label of each class id.
      mean, std: float64 arrays [F] of the train part, used to standardise both parts.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @property
    def in_features(self) -> int:
        """F, the number of features."""
        return int(self.x_train.shape[1])

    @property
    def out_features(self) -> int:
        """Outputs of a classifier for this data: 1 logit for 2 classes, else C."""
        return 1 if self.classes == 2 else self.classes


def load_dataset(
    name: str, *, label: str | None = None, test_size: float = 1 / 3, seed: int = PAPER_RANDOM_STATE
) -> Dataset:
    """Load a data set by name and split it.

    Args:
      name: ``"moons"`` (the paper's: 1,500 points, noise 0.05, random_state 8),
        ``"circles"``, ``"blobs"`` (3 classes), a bundled scikit-learn set
        (``"breast_cancer"``, ``"iris"``, ``"wine"``, ``"digits"``) or the path of a CSV file.
      label: the CSV column holding the labels (required for CSV, unused otherwise).
      test_size: fraction of the points in the test part (the paper's 2:1 split: 1/3).
      seed: random_state of the synthetic generators and of the split.

    Returns:
      The :class:`Dataset` (two moons: 1,000 train and 500 test points).
    """
    if name in SYNTHETIC:
        features, labels = _synthetic(name, seed)
    elif name in BUNDLED:
        import sklearn.datasets  # imported here: it takes a second and only loading needs it

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        features, labels = bunch.data, bunch.target
    elif name.endswith(".csv") or Path(name).is_file():
        features, labels = read_csv(name, label)
    else:
        raise ValueError(
            f"load_dataset: unknown data set {name!r}; expected one of "
            f"{list(SYNTHETIC + BUNDLED)} or the path of a CSV file"
        )
    return split_dataset(features, labels, name=name, test_size=test_size, seed=seed)


def _synthetic(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [1500, 2] and labels [1500] of a scikit-learn generator with the paper's size."""
    import sklearn.datasets
    if name == "moons":
        return sklearn.datasets.make_moons(PAPER_SAMPLES, noise=PAPER_NOISE, random_state=seed)
    if name == "circles":
        return sklearn.datasets.make_circles(PAPER_SAMPLES, noise=PAPER_NOISE, factor=0.5, random_state=seed)
    return sklearn.datasets.make_blobs(PAPER_SAMPLES, centers=3, random_state=seed)


def read_csv(path: str | Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV file with a header row: numeric feature columns and one label column.

    Returns:
      features float64 [N, F] (every column but ``label``) and labels [N] (strings).
    """
    if label is None:
        raise ValueError(f"read_csv: label must name the label column of {str(path)!r}, got None")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"read_csv: path must be an existing CSV file, got {str(path)!r}")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0] if rows else [], [row for row in rows[1:] if row]
    if label not in header:
        raise ValueError(f"read_csv: label column {label!r} not in {str(path)!r}; columns: {header}")
    column = header.index(label)
    try:
        features = np.array(
            [[float(v) for i, v in enumerate(row) if i != column] for row in body], dtype=np.float64
        )
    except ValueError as error:
        raise ValueError(f"read_csv: feature columns of {str(path)!r} must be numeric ({error})") from None
    return features.reshape(len(body), len(header) - 1), np.array([row[column] for row in body])


def split_dataset(
    features: np.ndarray, labels: np.ndarray, *, name: str, test_size: float = 1 / 3, seed: int = 0
) -> Dataset:
    """Check, encode, split (stratified) and standardise (train statistics) a labelled set.

    Args:
      features: array [N, F] of finite numbers.
      labels: array [N] of any hashable labels, with at least two distinct values.
      name: recorded in the result.
      test_size: fraction of the points in the test part.
      seed: random_state of the stratified split.
    """
    from sklearn.model_selection import train_test_split

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    check_features(features, labels)
    class_names, ids = np.unique(labels, return_inverse=True)
    if len(class_names) < 2:
        raise ValueError(
            f"split_dataset: labels must hold at least 2 classes, got only {class_names.tolist()}"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        features, ids, test_size=test_size, stratify=ids, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std).to(torch.float32)

    return Dataset(
        name=name,
        x_train=tensor(x_train),
        y_train=torch.from_numpy(y_train).to(torch.int64),
        x_test=tensor(x_test),
        y_test=torch.from_numpy(y_test).to(torch.int64),
        classes=len(class_names),
        class_names=tuple(str(c) for c in class_names),
        mean=mean,
        std=std,
    )


def check_features(features: np.ndarray, labels: np.ndarray) -> None:
    """Raise ValueError unless features is a finite [N, F] array and labels is [N], N ≥ 2."""
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features must be a 2-D array [N >= 2, F >= 1], got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must have shape ({features.shape[0]},) to match features, got {labels.shape}"
        )
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"features must be finite numbers, got {int(bad.sum())} NaN/inf values "
            f"(first at row {row}, column {col})"
        )
