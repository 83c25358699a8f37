"""Data sets for distillation: the paper's two moons, other synthetic sets, scikit-learn's
bundled tabular sets and CSV files; the :class:`Dataset` every loader returns (images too).

A :class:`Dataset` is a train/test split (stratified unless the data come split) whose inputs
are standardised with the mean and standard deviation of the train part,
``x = (x_raw − mean_train) / std_train`` (per feature; per channel for images), and whose labels
are class ids ``0 … C−1``. Nothing is downloaded: the scikit-learn sets are the ``load_*`` ones
shipped in the package.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
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
    """A standardised train/test split of tabular data ([N, F]) or images ([N, C, H, W]).

    Attributes:
      name: what it was loaded from (a data set name or a path).
      x_train: float32 tensor [N_train, *in_shape]; x_test: float32 tensor [N_test, *in_shape].
        ``in_shape`` is (F,) for tabular data and (C, H, W) for images.
      y_train: int64 tensor [N_train] of class ids 0 … C−1; y_test: int64 tensor [N_test].
      classes: the number of classes (≥ 2).
      class_names: the name of each class id.
      mean, std: float64 arrays of the train part, used to standardise both parts: shape [F]
        (per feature) for tabular data, [C] (per channel) for images. See :meth:`normalize`.
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
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input: (F,) for tabular data, (C, H, W) for images."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for images (inputs [N, C, H, W])."""
        return self.x_train.ndim == 4

    @property
    def in_features(self) -> int:
        """F for tabular data; for images C·H·W, the width of an input once flattened."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        """Outputs of a classifier for this data: 1 logit for 2 classes, else C."""
        return 1 if self.classes == 2 else self.classes

    def display(self) -> dict[str, list]:
        """JSON values to show data made from this set as it looks: ``mean`` and ``std`` (per
        feature or channel) and ``class_names`` (what DistilledData.config records)."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "class_names": list(self.class_names)}

    def normalize(self, x_raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Standardise raw inputs [..., *in_shape] as the data were: ``(x_raw − mean) / std``.

        Returns a float32 tensor of the same shape (on ``x_raw``'s device for a tensor).
        """
        x, mean, std = self._stats_like(x_raw)
        return ((x - mean) / std).to(torch.float32)

    def denormalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Undo :meth:`normalize`: inputs [..., *in_shape] back to raw values (float32), e.g. for display."""
        x, mean, std = self._stats_like(x)
        return (x * std + mean).to(torch.float32)

    def _stats_like(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x as a float tensor, and mean/std shaped to broadcast against it ([C, 1, 1] for images)."""
        x = torch.as_tensor(x)
        shape = self.in_shape
        if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
            raise ValueError(f"Dataset {self.name!r}: inputs must have shape [..., {', '.join(map(str, shape))}], "
                             f"got {list(x.shape)}")
        dtype = torch.float32 if x.device.type == "mps" else torch.float64  # mps has no float64
        stat_shape = (-1, 1, 1) if self.is_image else (-1,)
        mean, std = (torch.as_tensor(v, dtype=dtype, device=x.device).view(stat_shape) for v in (self.mean, self.std))
        return x.to(dtype), mean, std


def load_tabular(
    name: str, *, label: str | None = None, test_size: float = 1 / 3, seed: int = PAPER_RANDOM_STATE
) -> Dataset:
    """Load a synthetic set, a bundled scikit-learn set or a CSV file and split it.

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
    else:
        features, labels = read_csv(name, label)
        try:
            return split_dataset(features, labels, name=name, test_size=test_size, seed=seed)
        except ValueError as error:  # e.g. a class too small to stratify: name the file
            raise ValueError(f"load_tabular: {name!r} cannot be split into train and test parts: {error}") from None
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
      features float64 [N, F] (every column but ``label``; finite) and labels [N] (strings,
      at least two distinct values).

    Raises:
      ValueError: naming the file (and the line and column where it helps) for a missing file,
        one that is not UTF-8 text or not CSV, an empty one, a missing or repeated label column,
        no feature columns, a row of the wrong width, a value that is not a finite number, an
        empty label, or fewer than two rows or classes.
    """
    if label is None:
        raise ValueError(f"read_csv: label must name the label column of {str(path)!r}, got None")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"read_csv: path must be an existing CSV file, got {str(path)!r}")
    where = f"read_csv: {str(path)!r}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as error:
        raise ValueError(f"{where} is not a UTF-8 text file ({error})") from None
    except csv.Error as error:
        raise ValueError(f"{where} is not a readable CSV file ({error})") from None
    if not rows:
        raise ValueError(f"{where} is empty: expected a header row naming the columns, then one row per sample")
    header, body = rows[0][1], rows[1:]
    if label not in header:
        raise ValueError(f"read_csv: label column {label!r} not in {str(path)!r}; columns: {header}")
    if header.count(label) > 1:
        raise ValueError(f"{where} has {header.count(label)} columns named {label!r}, expected one label column")
    if len(header) < 2:
        raise ValueError(f"{where} has no feature columns besides the label column {label!r}")
    column = header.index(label)
    features = np.array([_numeric_row(row, line, header, column, where) for line, row in body],
                        dtype=np.float64).reshape(len(body), len(header) - 1)
    labels = np.array([row[column] for _, row in body])
    if len(body) < 2:
        raise ValueError(f"{where} has {len(body)} data row(s), expected at least 2")
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"{where}: label column {label!r} holds only the class {str(labels[0])!r}, "
                         "expected at least 2 classes")
    return features, labels


def _numeric_row(row: list[str], line: int, header: list[str], column: int, where: str) -> list[float]:
    """The finite numbers of a CSV row's feature fields; ValueError naming the line and column."""
    if len(row) != len(header):
        raise ValueError(f"{where} line {line} has {len(row)} fields, expected {len(header)} like the header")
    if not row[column].strip():
        raise ValueError(f"{where} line {line} has an empty label in column {header[column]!r}")
    values = []
    for i, text in enumerate(row):
        if i == column:
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where} line {line}, column {header[i]!r}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{where} line {line}, column {header[i]!r}: expected a finite number, got {text!r}")
        values.append(value)
    return values


def split_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    test_size: float = 1 / 3,
    seed: int = 0,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Check, encode, split (stratified) and standardise (train statistics) a labelled set.

    Args:
      features: array [N, F] of finite numbers.
      labels: array [N] of any hashable labels, with at least two distinct values.
      name: recorded in the result.
      test_size: fraction of the points in the test part.
      seed: random_state of the stratified split.
      test: a given test part (features [M, F], labels [M]) instead of a split; its labels must
        be among the train labels.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    check_features(features, labels)
    if test is None:
        class_names, ids, _ = encode_labels(labels, who="split_dataset")
        train, held_out = stratified_split(ids, test_size=test_size, seed=seed)
        x_train, x_test, y_train, y_test = features[train], features[held_out], ids[train], ids[held_out]
    else:
        x_test, test_labels = np.asarray(test[0], dtype=np.float64), np.asarray(test[1])
        check_features(x_test, test_labels)
        if x_test.shape[1] != features.shape[1]:
            raise ValueError(f"split_dataset: test features must have {features.shape[1]} columns like the "
                             f"train features, got {x_test.shape[1]}")
        class_names, y_train, y_test = encode_labels(labels, test_labels, who="split_dataset")
        x_train = features
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
        class_names=class_names,
        mean=mean,
        std=std,
    )


def encode_labels(
    labels: np.ndarray,
    test_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    who: str = "encode_labels",
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray | None]:
    """Class names and int64 class ids of train labels [N] and test labels [M] (None: none).

    Without ``class_names`` the classes are the sorted distinct train labels (at least 2) and
    test labels must be among them. With ``class_names`` the labels already are the integer
    ids ``0 … len(class_names)−1``. ``who`` prefixes the error messages.
    """
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        test_ids = None if test_labels is None else _checked_ids(test_labels, len(names), who)
        return names, _checked_ids(labels, len(names), who), test_ids
    classes, ids = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{who}: labels must hold at least 2 classes, got only {classes.tolist()}")
    test_ids = None
    if test_labels is not None:
        index = {c: i for i, c in enumerate(classes.tolist())}
        unseen = sorted({str(v) for v in test_labels.tolist() if v not in index})
        if unseen:
            raise ValueError(f"{who}: test labels {unseen[:10]} are not among the train classes "
                             f"{[str(c) for c in classes.tolist()]}")
        test_ids = np.array([index[v] for v in test_labels.tolist()], dtype=np.int64).reshape(-1)
    return tuple(str(c) for c in classes.tolist()), ids.reshape(-1).astype(np.int64), test_ids


def _checked_ids(labels: np.ndarray, classes: int, who: str) -> np.ndarray:
    """labels [N] as int64 ids; ValueError unless they are integers in 0 … classes−1."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{who}: labels must be integer class ids 0 … {classes - 1}, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise ValueError(f"{who}: labels must be class ids 0 … {classes - 1}, got {int(bad[0])}")
    return labels.astype(np.int64)


def stratified_split(ids: np.ndarray, *, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a stratified split of class ids [N] (scikit-learn's, random_state=seed)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(ids)), test_size=test_size, stratify=ids, random_state=seed)
    return train, test


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
