"""Image data sets as standardised :class:`~memdistill.data.tabular.Dataset` s of [N, C, H, W].

Sets: scikit-learn's bundled 8×8 digits (``"digits-images"``, offline), MNIST and Fashion-MNIST
(the published IDX files), CIFAR-10 and CIFAR-100 (the published *binary* version), a folder in
ImageFolder layout, and a ``.npz`` file. Nothing is downloaded: the named sets are read from a
local folder, ``root`` or else the environment variable ``MEMDISTILL_DATA``. Pixels are
standardised per channel with the mean and standard deviation of the train part.

Each reader is a small pure function of its file(s) whose docstring states the format. A
missing file is a :class:`DataNotFoundError` (a FileNotFoundError and a ValueError) naming the
files and the folders searched; a truncated or corrupt file is a ValueError naming the file.
Nothing read from a file is ever unpickled.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memdistill.data.tabular import PAPER_RANDOM_STATE, Dataset, encode_labels, split_dataset, stratified_split

IMAGES = ("digits-images", "mnist", "fashion-mnist", "cifar10", "cifar100")
DATA_ENV = "MEMDISTILL_DATA"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
CIFAR100_FILES = ("train.bin", "test.bin")
CIFAR_PIXELS = 3 * 32 * 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")
_CHUNK_VALUES = 1 << 22  # values standardised at a time: bounds the float64 temporaries (32 MB)


class DataNotFoundError(FileNotFoundError, ValueError):
    """The files of a data set are not where they were looked for (also a ValueError)."""


@dataclass(frozen=True)
class _Source:
    """Where a named set's files are: required files, folders under the root searched first, .gz allowed."""

    files: tuple[str, ...]
    subfolders: tuple[str, ...]
    gzip: bool
    hint: str


SOURCES = {
    "mnist": _Source(MNIST_FILES, ("mnist", "MNIST/raw"), True, "the four MNIST IDX files, plain or .gz"),
    "fashion-mnist": _Source(
        MNIST_FILES, ("fashion-mnist", "FashionMNIST/raw"), True, "the four Fashion-MNIST IDX files, plain or .gz"
    ),
    "cifar10": _Source(
        CIFAR10_FILES,
        ("cifar10", "cifar10/cifar-10-batches-bin", "cifar-10-batches-bin"),
        False,
        "the extracted binary version of CIFAR-10 (cifar-10-binary.tar.gz; the pickled python version is never read)",
    ),
    "cifar100": _Source(
        CIFAR100_FILES,
        ("cifar100", "cifar100/cifar-100-binary", "cifar-100-binary"),
        False,
        "the extracted binary version of CIFAR-100 (cifar-100-binary.tar.gz; the pickled python version is never read)",
    ),
}


# ---------------------------------------------------------------- readers: one per format


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST's format), plain or gzip-compressed.

    Format: a big-endian 4-byte magic number ``0x000008D`` (type 0x08 = unsigned byte, D
    dimensions: 0x00000801 for labels, 0x00000803 for images), D big-endian uint32 sizes, then
    the ``prod(sizes)`` data bytes in row-major order, nothing after.

    Args:
      path: the file; compressed when it starts with the gzip bytes 1f 8b (whatever its name).
      ndim: the number of dimensions required (3: images, 1: labels); None accepts 1 … 4.

    Returns:
      uint8 array of the header's shape, e.g. [N, 28, 28] or [N].
    """
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"read_idx: {path}: truncated: {len(data)} bytes, not even the 4-byte magic number")
    dims = data[3]
    if data[:3] != b"\x00\x00\x08" or not 1 <= dims <= 4 or (ndim is not None and dims != ndim):
        expected = f"0x{0x800 + ndim:08x}" if ndim else "0x00000801 … 0x00000804"
        raise ValueError(
            f"read_idx: {path}: bad magic number 0x{int.from_bytes(data[:4], 'big'):08x}, expected {expected} "
            f"(an IDX file of unsigned bytes{f' with {ndim} dimension(s)' if ndim else ''})"
        )
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"read_idx: {path}: truncated header: {len(data)} bytes, {dims} dimensions need {header}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    size = header + math.prod(shape)
    if len(data) != size:
        raise ValueError(
            f"read_idx: {path}: size does not match the header: shape {list(shape)} needs {size} bytes, the file "
            f"has {len(data)} ({'truncated' if len(data) < size else 'extra bytes at the end'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_cifar_binary(
    paths: Sequence[str | Path], label_bytes: int, classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read files of CIFAR's binary version, concatenated in order.

    Format: fixed-size records, nothing else: ``label_bytes`` label bytes (CIFAR-10: 1;
    CIFAR-100: 2, coarse then fine), then 3,072 pixel bytes: the 32×32 red plane, then green,
    then blue, each row-major.

    Args:
      paths: the files (e.g. ``data_batch_1.bin`` … ``data_batch_5.bin``).
      label_bytes: 1 or 2; the label kept is the last label byte (CIFAR-100: the fine label).
      classes: labels must be below it (a check against a wrong file); None: unchecked.

    Returns:
      images uint8 [N, 3, 32, 32] and labels int64 [N].
    """
    record = label_bytes + CIFAR_PIXELS
    images, labels = [], []
    for path in paths:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0 or data.size % record:
            raise ValueError(
                f"read_cifar_binary: {path}: size {data.size} bytes is not a whole number of {record}-byte records "
                f"({label_bytes} label byte(s) + {CIFAR_PIXELS} pixel bytes): truncated or not a CIFAR binary file"
            )
        rows = data.reshape(-1, record)
        label = rows[:, label_bytes - 1].astype(np.int64)
        if classes is not None and label.max() >= classes:
            bad = int(np.argmax(label >= classes))
            raise ValueError(
                f"read_cifar_binary: {path}: record {bad} has label {label[bad]}, expected 0 … {classes - 1}: "
                "not a CIFAR binary file of this set"
            )
        images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Read a text file of class names, one a line (blank lines skipped), e.g. CIFAR's ``batches.meta.txt``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"read_class_names: {path} must be a UTF-8 text file of class names, one a line ({error})") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_image_folder(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder in ImageFolder layout with Pillow.

    Format: one subfolder per class (its name is the label; hidden ones skipped) holding PNG or
    JPEG images (``.png``, ``.jpg``, ``.jpeg``; other files skipped), all of one size and one kind:
    grey (modes ``1``, ``L``, ``LA``: 1 channel) or colour (``RGB``, ``RGBA``, ``P``, ``CMYK``,
    ``YCbCr``: converted to 3 RGB channels, alpha dropped).

    Returns:
      images uint8 [N, C, H, W] (classes in sorted order, files sorted by name) and labels [N]
      (the class folder names).
    """
    folder = Path(path)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"read_image_folder: {folder} has no class subfolders; expected one subfolder of PNG/JPEG images per class"
        )
    files, labels = [], []
    for class_folder in classes:
        found = sorted(f for f in class_folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not found:
            raise ValueError(f"read_image_folder: class folder {class_folder} has no PNG/JPEG images")
        files += found
        labels += [class_folder.name] * len(found)
    images = [_read_image(f) for f in files]
    for file, image in zip(files, images):
        if image.shape != images[0].shape:
            raise ValueError(
                f"read_image_folder: {file} is {_describe(image)} but {files[0]} is {_describe(images[0])}; "
                "all images must have one size and be all grey or all colour"
            )
    return np.stack(images), np.array(labels)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a NumPy ``.npz`` archive of plain arrays, never unpickling (``allow_pickle=False``).

    Format: arrays ``x`` (inputs: [N, F] tabular, [N, H, W] or [N, C, H, W] images) and ``y``
    (labels [N]), optionally ``x_test`` and ``y_test`` (both or neither); other arrays are ignored.

    Returns:
      {"x", "y"[, "x_test", "y_test"]} → array, shapes checked (see above).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"read_npz: no file at {str(path)!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"read_npz: {path}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"read_npz: {path} holds a single .npy array, not an .npz archive of arrays 'x' and 'y'")
    with archive:
        names = archive.files
        wanted = ["x", "y"] + (["x_test", "y_test"] if "x_test" in names or "y_test" in names else [])
        missing = [key for key in wanted if key not in names]
        if missing:
            raise ValueError(
                f"read_npz: {path} has no array {missing[0]!r} (arrays: {names}); expected x [N, ...] and y [N], "
                "optionally x_test and y_test together"
            )
        arrays = {key: _npz_array(archive, key, path) for key in wanted}
    for suffix in ("", "_test") if "x_test" in arrays else ("",):
        _check_npz_pair(arrays[f"x{suffix}"], arrays[f"y{suffix}"], suffix, path)
    if "x_test" in arrays and arrays["x_test"].ndim != arrays["x"].ndim:
        raise ValueError(
            f"read_npz: {path}: array 'x_test' has shape {list(arrays['x_test'].shape)}, 'x' {list(arrays['x'].shape)}"
        )
    return arrays


def npz_dims(path: str | Path) -> int | None:
    """The number of dimensions of array ``x`` of an .npz archive, read from its header alone
    (nothing loaded); None where there is no readable ``x``."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return len(header(f)[0])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(
            f"read_npz: {path}: cannot read array {key!r} ({error}); arrays of Python objects are never "
            "unpickled: store numbers or strings"
        ) from None


def _check_npz_pair(x: np.ndarray, y: np.ndarray, suffix: str, path: Path) -> None:
    """ValueError naming the file and the array unless x is numeric [N, F | H, W | C, H, W] and y is [N]."""
    if x.dtype.kind not in "biuf" or x.ndim not in (2, 3, 4):
        raise ValueError(
            f"read_npz: {path}: array 'x{suffix}' must be numbers of shape [N, F], [N, H, W] or [N, C, H, W], "
            f"got {x.dtype} {list(x.shape)}"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(f"read_npz: {path}: array 'y{suffix}' must have shape [{x.shape[0]}], got {list(y.shape)}")


def _read_maybe_gzip(path: str | Path) -> bytes:
    """The bytes of a file, decompressed when it is gzip (starts with 1f 8b)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({error})") from None


def _read_image(path: Path) -> np.ndarray:
    """One image file as uint8 [1, H, W] (grey) or [3, H, W] (colour); ValueError naming the file."""
    from PIL import Image  # imported here: only image folders need Pillow

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in GREY_MODES:
                return np.asarray(image.convert("L"))[None].copy()
            if mode in COLOUR_MODES:
                return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"read_image_folder: cannot read image {path} ({error})") from None
    raise ValueError(
        f"read_image_folder: {path} has image mode {mode!r}; expected grey {list(GREY_MODES)} or colour "
        f"{list(COLOUR_MODES)}"
    )


def _describe(image: np.ndarray) -> str:
    channels, height, width = image.shape
    return f"{width}×{height} {'grey' if channels == 1 else 'colour'}"


# ---------------------------------------------------------------- split and standardise


def split_images(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    class_names: Sequence[str] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    test_size: float = 1 / 3,
    seed: int = PAPER_RANDOM_STATE,
) -> Dataset:
    """Check, encode, split (stratified, unless ``test`` is given) and standardise per channel.

    Args:
      images: [N, C, H, W] or [N, H, W] (one channel) finite numbers, e.g. uint8 pixels.
      labels: [N] labels (the classes: their sorted distinct values), or with ``class_names``
        the class ids 0 … len(class_names)−1.
      name: recorded in the result.
      class_names: the name of each class id; None: derived from the labels.
      test: a given test part (images [M, C, H, W] or [M, H, W], labels [M]) instead of a split.
      test_size, seed: the stratified split's, as in :func:`~memdistill.data.tabular.split_dataset`.

    Returns:
      The :class:`Dataset`: x float32 [N, C, H, W] = (images − mean[c]) / std[c], mean and std
      float64 [C] of the train part (a constant channel gets std 1).
    """
    x, labels = _as_nchw(images), np.asarray(labels)
    _check_images(x, labels, "images")
    if test is None:
        names, ids, _ = encode_labels(labels, class_names=class_names, who="split_images")
        train, held_out = stratified_split(ids, test_size=test_size, seed=seed)
        x_train, x_test, y_train, y_test = x[train], x[held_out], ids[train], ids[held_out]
    else:
        x_test, test_labels = _as_nchw(test[0]), np.asarray(test[1])
        _check_images(x_test, test_labels, "test images")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"split_images: test images must have shape [M, {', '.join(map(str, x.shape[1:]))}] "
                             f"like the train images, got {list(x_test.shape)}")
        names, y_train, y_test = encode_labels(labels, test_labels, class_names, who="split_images")
        x_train = x
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=standardize(x_train, mean, std),
        y_train=torch.from_numpy(y_train),
        x_test=standardize(x_test, mean, std),
        y_test=torch.from_numpy(y_test),
        classes=len(names),
        class_names=names,
        mean=mean,
        std=std,
    )


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64 [C]; 0 → 1) of images [N, C, H, W], in chunks."""
    count = images.shape[0] * images.shape[2] * images.shape[3]
    total = sum((chunk.sum(axis=(0, 2, 3), dtype=np.float64) for chunk in _chunks(images)), np.zeros(images.shape[1]))
    mean = total / count
    squares = np.zeros_like(mean)
    for chunk in _chunks(images):
        centred = chunk.astype(np.float64) - mean[:, None, None]
        squares += (centred * centred).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / count)
    return mean, np.where(std > 0, std, 1.0)


def standardize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 tensor [N, C, H, W] of ``(images − mean[c]) / std[c]``, computed in float64 in chunks."""
    out = np.empty(images.shape, dtype=np.float32)
    start = 0
    for chunk in _chunks(images):
        out[start: start + len(chunk)] = (chunk - mean[:, None, None]) / std[:, None, None]
        start += len(chunk)
    return torch.from_numpy(out)


def _chunks(images: np.ndarray):
    step = max(1, _CHUNK_VALUES // max(1, math.prod(images.shape[1:])))
    return (images[i: i + step] for i in range(0, len(images), step))


def _as_nchw(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images[:, None] if images.ndim == 3 else images


def _check_images(x: np.ndarray, labels: np.ndarray, what: str) -> None:
    """ValueError unless x is finite numbers [N ≥ 1, C, H, W] and labels is [N]."""
    if x.ndim != 4 or x.shape[0] < 1 or min(x.shape[1:]) < 1:
        raise ValueError(f"split_images: {what} must be an array [N, C, H, W] or [N, H, W], got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"split_images: {what} must be numbers, got dtype {x.dtype}")
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"split_images: labels must have shape ({x.shape[0]},) to match the {what}, got {labels.shape}"
        )
    if x.dtype.kind == "f" and not all(np.isfinite(chunk).all() for chunk in _chunks(x)):
        raise ValueError(f"split_images: {what} must be finite numbers, got NaN/inf values")


# ---------------------------------------------------------------- loaders


def load_image_set(
    name: str, *, root: str | Path | None = None, test_size: float = 1 / 3, seed: int = PAPER_RANDOM_STATE
) -> Dataset:
    """Load a named image set (one of :data:`IMAGES`).

    ``"digits-images"``: scikit-learn's bundled digits as [1797, 1, 8, 8] (values 0 … 16),
    split stratified (``test_size``, ``seed``) like the tabular ``"digits"``. The others keep
    their official train/test split and are read from ``root`` (None: ``$MEMDISTILL_DATA``):
    mnist, fashion-mnist [N, 1, 28, 28]; cifar10, cifar100 (fine labels) [N, 3, 32, 32].
    """
    if name == "digits-images":
        import sklearn.datasets  # imported here: it takes a second and only loading needs it

        digits = sklearn.datasets.load_digits()
        return split_images(digits.images, digits.target, name=name, test_size=test_size, seed=seed)
    if name not in SOURCES:
        raise ValueError(f"load_image_set: unknown image set {name!r}; expected one of {list(IMAGES)}")
    folder = find_data_folder(name, root)
    if name in ("mnist", "fashion-mnist"):
        return _load_mnist(name, folder)
    return _load_cifar10(folder) if name == "cifar10" else _load_cifar100(folder)


def data_root(name: str, root: str | Path | None) -> Path:
    """``root``, else ``$MEMDISTILL_DATA``; ValueError saying how to give it when neither is set."""
    root = root if root is not None else os.environ.get(DATA_ENV) or None
    if root is None:
        source = SOURCES[name]
        raise ValueError(
            f"load_dataset: unknown data set {name!r} location: its files ({', '.join(_expected(source))}: "
            f"{source.hint}) are read from a local folder, nothing is downloaded; give the folder with "
            f"root=DIR, --data-root DIR on the command line, or the environment variable {DATA_ENV}"
        )
    return Path(root)


def find_data_folder(name: str, root: str | Path | None) -> Path:
    """The first folder holding every file of a named set: root/<subfolder> … (see SOURCES), then root.

    Raises:
      DataNotFoundError naming the files, each folder searched and what it lacked.
    """
    base, source = data_root(name, root), SOURCES[name]
    searched = []
    for folder in [base / sub for sub in source.subfolders] + [base]:
        missing = [file for file in source.files if _find_file(folder, file, source.gzip) is None]
        if not missing:
            return folder
        searched.append(f"{folder} ({'no such folder' if not folder.is_dir() else 'lacks ' + ', '.join(missing)})")
    raise DataNotFoundError(
        f"load_dataset: cannot find the files of {name!r}: {', '.join(_expected(source))} ({source.hint}). "
        f"Looked in: {'; '.join(searched)}. Put them in one of these folders, or give their folder with "
        f"root=DIR, --data-root DIR on the command line, or the environment variable {DATA_ENV}"
    )


def _expected(source: _Source) -> list[str]:
    return [f"{file}[.gz]" if source.gzip else file for file in source.files]


def _find_file(folder: Path, file: str, gzipped: bool) -> Path | None:
    """folder/file, else folder/file.gz when allowed, else None. An IDX name is also found in
    its other published spelling (``train-images.idx3-ubyte`` for ``train-images-idx3-ubyte``)."""
    names = [file]
    if "-idx" in file:
        names.append(file.replace("-idx", ".idx"))
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz") if gzipped else (folder / name,):
            if candidate.is_file():
                return candidate
    return None


def _load_mnist(name: str, folder: Path) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files in folder: official split, [N, 1, H, W]."""
    paths = [_find_file(folder, file, True) for file in MNIST_FILES]
    x_train, y_train, x_test, y_test = (read_idx(path, ndim) for path, ndim in zip(paths, (3, 1, 3, 1)))
    for images, labels, (image_path, label_path) in ((x_train, y_train, paths[:2]), (x_test, y_test, paths[2:])):
        if len(images) != len(labels):
            raise ValueError(f"load_dataset: {image_path} holds {len(images)} images but {label_path} "
                             f"{len(labels)} labels")
        _check_label_range(labels, 10, label_path)
    names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    return split_images(x_train, y_train, name=name, class_names=names, test=(x_test, y_test))


def _load_cifar10(folder: Path) -> Dataset:
    """CIFAR-10's binary version in folder: 50,000 train / 10,000 test images [3, 32, 32]."""
    x_train, y_train = read_cifar_binary([folder / f for f in CIFAR10_FILES[:-1]], 1, classes=10)
    x_test, y_test = read_cifar_binary([folder / CIFAR10_FILES[-1]], 1, classes=10)
    names = _class_names(folder / "batches.meta.txt", 10, CIFAR10_CLASSES)
    return split_images(x_train, y_train, name="cifar10", class_names=names, test=(x_test, y_test))


def _load_cifar100(folder: Path) -> Dataset:
    """CIFAR-100's binary version in folder, fine labels: 50,000 train / 10,000 test images [3, 32, 32]."""
    x_train, y_train = read_cifar_binary([folder / "train.bin"], 2, classes=100)
    x_test, y_test = read_cifar_binary([folder / "test.bin"], 2, classes=100)
    names = _class_names(folder / "fine_label_names.txt", 100, tuple(str(i) for i in range(100)))
    return split_images(x_train, y_train, name="cifar100", class_names=names, test=(x_test, y_test))


def _class_names(path: Path, classes: int, default: tuple[str, ...]) -> tuple[str, ...]:
    """The class names in path (one a line) when it exists, else default."""
    if not path.is_file():
        return default
    names = read_class_names(path)
    if len(names) != classes:
        raise ValueError(f"load_dataset: {path} must name {classes} classes, one a line, got {len(names)}")
    return names


def _check_label_range(labels: np.ndarray, classes: int, path: Path) -> None:
    if labels.size and labels.max() >= classes:
        raise ValueError(f"load_dataset: {path} holds label {int(labels.max())}, expected 0 … {classes - 1}")


def load_image_folder(path: str | Path, *, test_size: float = 1 / 3, seed: int = PAPER_RANDOM_STATE) -> Dataset:
    """A folder in ImageFolder layout (see :func:`read_image_folder`) as a :class:`Dataset`.

    With ``train/`` and ``test/`` subfolders (each in ImageFolder layout) those are the split
    and the classes are train's subfolders; otherwise the folder is split stratified.
    """
    folder = Path(path)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        x_train, y_train = read_image_folder(folder / "train")
        x_test, y_test = read_image_folder(folder / "test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"load_dataset: the images of {folder / 'test'} are {list(x_test.shape[1:])} [C, H, W] but those "
                f"of {folder / 'train'} {list(x_train.shape[1:])}"
            )
        return split_images(x_train, y_train, name=str(path), test=(x_test, y_test))
    images, labels = read_image_folder(folder)
    return split_images(images, labels, name=str(path), test_size=test_size, seed=seed)


def load_npz(path: str | Path, *, test_size: float = 1 / 3, seed: int = PAPER_RANDOM_STATE) -> Dataset:
    """A ``.npz`` file (see :func:`read_npz`) as a :class:`Dataset`: tabular for x [N, F], else images.

    With ``x_test``/``y_test`` those are the test part; otherwise the set is split stratified.
    """
    arrays = read_npz(path)
    test = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None
    split = split_dataset if arrays["x"].ndim == 2 else split_images
    return split(arrays["x"], arrays["y"], name=str(path), test_size=test_size, seed=seed, test=test)
