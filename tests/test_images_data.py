"""Image data sets: IDX, CIFAR binaries, ImageFolder, .npz, digits-images; their errors."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from memdistill.data import IMAGES, DataNotFoundError, is_image_data, load_dataset, split_images
from memdistill.data.images import FASHION_MNIST_CLASSES, MNIST_FILES, read_cifar_binary, read_idx

RNG = np.random.default_rng(0)


def write_idx(path, array, gz=False):
    """An IDX file of uint8 ``array`` (magic 0x000008D, big-endian sizes, bytes); gzipped as path.gz."""
    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_mnist(folder, gz=False, train=8, test=4, height=5, width=4):
    """Tiny MNIST files in folder; returns (x_train, y_train, x_test, y_test) as written."""
    arrays = (
        RNG.integers(0, 256, (train, height, width)),
        np.arange(train) % 3,
        RNG.integers(0, 256, (test, height, width)),
        np.arange(test) % 3 + 7,
    )
    for file, array in zip(MNIST_FILES, arrays):
        write_idx(folder / file, array, gz)
    return arrays


def cifar_records(labels, fine=None):
    """CIFAR binary records: label byte(s) then red, green, blue 32×32 planes around 10, 100, 200."""
    pixels = np.stack([RNG.integers(c - 5, c + 5, (len(labels), 32, 32)) for c in (10, 100, 200)], 1)
    label_bytes = np.array([labels] if fine is None else [labels, fine]).T
    records = np.concatenate([label_bytes, pixels.reshape(len(labels), -1)], 1).astype(np.uint8)
    return records.tobytes(), pixels.astype(np.uint8)


def write_cifar10(folder, names=True):
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(1, 6):
        data, pixels = cifar_records([i - 1, i + 4])
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        train.append(pixels)
    data, test = cifar_records([3, 9, 0])
    (folder / "test_batch.bin").write_bytes(data)
    if names:
        (folder / "batches.meta.txt").write_text("".join(f"class{i}\n" for i in range(10)) + "\n\n")
    return np.concatenate(train), test


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    (image.convert(mode) if mode else image).save(path)


def write_image_folder(folder, classes=("cat", "dog", "ant"), per_class=6, size=(6, 5), colour=True):
    shape = (size[1], size[0], 3) if colour else (size[1], size[0])
    for name in classes:
        for i in range(per_class):
            write_png(folder / name / f"{i}.png", RNG.integers(0, 256, shape))


def assert_standardised(data):
    """x_train float32 [N, C, H, W]: every channel has mean 0 and std 1; raw values come back."""
    assert data.is_image and data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    channels = data.in_shape[0]
    assert data.mean.shape == data.std.shape == (channels,)
    x = data.x_train.double()
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(channels, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std((0, 2, 3), correction=0), torch.ones(channels, dtype=torch.float64), atol=1e-5, rtol=0
    )


# ---------------------------------------------------------------- the sets


def test_image_names_are_exported():
    assert IMAGES == ("digits-images", "mnist", "fashion-mnist", "cifar10", "cifar100")


def test_digits_images_is_the_bundled_set_as_8x8_split_like_digits():
    data = load_dataset("digits-images")
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.in_shape == (1, 8, 8) and data.in_features == 64 and data.classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    assert_standardised(data)
    table = load_dataset("digits")  # the tabular set is unchanged and split the same way
    assert table.in_shape == (64,) and not table.is_image
    assert torch.equal(data.y_train, table.y_train) and torch.equal(data.y_test, table.y_test)
    raw = data.denormalize(data.x_train)
    assert float(raw.min()) > -1e-4 and float(raw.max()) < 16 + 1e-4
    torch.testing.assert_close(raw, raw.round(), atol=1e-4, rtol=0)  # the 0 … 16 integer counts


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_mnist_idx_files_plain_or_gzipped_in_each_layout(tmp_path, gz, layout):
    x_train, y_train, x_test, y_test = write_mnist(tmp_path / layout, gz=gz)
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (8, 1, 5, 4) and data.x_test.shape == (4, 1, 5, 4)
    assert data.classes == 10 and data.class_names == tuple("0123456789") and data.out_features == 10
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    assert torch.equal(data.denormalize(data.x_test).round().to(torch.uint8)[:, 0], torch.from_numpy(x_test))
    assert_standardised(data)


def test_mnist_idx_files_in_their_dotted_spelling(tmp_path):
    arrays = write_mnist(tmp_path / "other")
    for file in MNIST_FILES:  # train-images.idx3-ubyte, as some mirrors publish them
        (tmp_path / "other" / file).rename(tmp_path / file.replace("-idx", ".idx"))
    data = load_dataset("mnist", root=tmp_path)
    assert data.y_train.tolist() == arrays[1].tolist() and data.x_test.shape == (4, 1, 5, 4)


def test_fashion_mnist_names_and_the_environment_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path / "fashion-mnist", gz=True)
    monkeypatch.setenv("MEMDISTILL_DATA", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[0] == "T-shirt/top"
    assert data.name == "fashion-mnist" and data.in_shape == (1, 5, 4)


def test_read_idx_returns_the_headers_shape(tmp_path):
    array = RNG.integers(0, 256, (3, 2, 7))
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", array, gz=True), ndim=3), array)
    assert read_idx(write_idx(tmp_path / "b", np.arange(5)), ndim=1).tolist() == list(range(5))


@pytest.mark.parametrize("layout", ["", "cifar10", "cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"])
def test_cifar10_binary(tmp_path, layout):
    train, test = write_cifar10(tmp_path / layout)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.y_train.tolist() == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9] and data.y_test.tolist() == [3, 9, 0]
    assert data.class_names == tuple(f"class{i}" for i in range(10))
    assert np.allclose(data.mean, train.mean((0, 2, 3))) and 90 < data.mean[1] < 110  # planes are R, G, B
    assert torch.equal(data.denormalize(data.x_train).round().to(torch.uint8), torch.from_numpy(train))
    assert_standardised(data)


def test_cifar10_without_meta_file_has_the_standard_names(tmp_path):
    write_cifar10(tmp_path, names=False)
    assert load_dataset("cifar10", root=tmp_path).class_names[:2] == ("airplane", "automobile")


@pytest.mark.parametrize("names", [False, True])
def test_cifar100_binary_uses_the_fine_label(tmp_path, names):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(cifar_records([1, 2, 3, 4], fine=[10, 99, 0, 50])[0])
    (folder / "test.bin").write_bytes(cifar_records([5, 6], fine=[7, 8])[0])
    if names:
        (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    data = load_dataset("cifar100", root=tmp_path)
    assert data.classes == 100 and data.in_shape == (3, 32, 32)
    assert data.y_train.tolist() == [10, 99, 0, 50] and data.y_test.tolist() == [7, 8]
    assert data.class_names[99] == ("fine99" if names else "99")


def test_read_cifar_binary_concatenates_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(cifar_records([1, 2])[0])
    (tmp_path / "b.bin").write_bytes(cifar_records([3])[0])
    x, y = read_cifar_binary([tmp_path / "a.bin", tmp_path / "b.bin"], label_bytes=1)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [1, 2, 3]


def test_image_folder_rgb_stratified(tmp_path):
    write_image_folder(tmp_path / "set")
    data = load_dataset(str(tmp_path / "set"))
    assert data.class_names == ("ant", "cat", "dog") and data.in_shape == (3, 5, 6)
    assert (len(data.x_train), len(data.x_test)) == (12, 6)
    assert data.y_train.bincount().tolist() == [4, 4, 4]
    assert_standardised(data)


def test_image_folder_grey_and_palette_and_alpha(tmp_path):
    write_image_folder(tmp_path / "grey", colour=False, classes=("a", "b"))
    assert load_dataset(str(tmp_path / "grey")).in_shape == (1, 5, 6)
    for i, mode in enumerate(["RGBA", "P", "RGB", "RGBA"]):
        write_png(tmp_path / "colour" / "ab"[i % 2] / f"{i}.png", RNG.integers(0, 256, (4, 4, 3)), mode)
    for i in range(2):
        write_png(tmp_path / "colour" / "ab"[i] / f"photo{i}.JPG", RNG.integers(0, 256, (4, 4, 3)))
    data = load_dataset(str(tmp_path / "colour"), test_size=0.5)
    assert data.in_shape == (3, 4, 4) and data.classes == 2 and len(data.x_train) + len(data.x_test) == 6


def test_image_folder_train_test_subfolders_are_the_split(tmp_path):
    write_image_folder(tmp_path / "train", classes=("x", "y"), per_class=3, colour=False)
    write_image_folder(tmp_path / "test", classes=("y",), per_class=2, colour=False)
    (tmp_path / "test" / "notes.txt").write_text("not an image, skipped")
    data = load_dataset(str(tmp_path))
    assert (len(data.x_train), len(data.x_test)) == (6, 2) and data.class_names == ("x", "y")
    assert data.y_test.tolist() == [1, 1]


def test_npz_images_tabular_and_given_test_part(tmp_path):
    path = tmp_path / "set.npz"
    scales = np.array([1.0, 10.0, 100.0])[None, :, None, None]
    np.savez(path, x=RNG.normal(5, 1, (12, 3, 4, 4)) * scales, y=np.arange(12) % 2)
    data = load_dataset(str(path))
    assert data.in_shape == (3, 4, 4) and (len(data.x_train), len(data.x_test)) == (8, 4)
    assert np.allclose(data.mean, [5, 50, 500], rtol=0.2)
    assert_standardised(data)
    np.savez(path, x=RNG.integers(0, 256, (6, 7, 7)), y=["a", "b"] * 3, x_test=np.zeros((2, 7, 7)), y_test=["b", "a"])
    data = load_dataset(str(path))
    assert data.in_shape == (1, 7, 7) and data.class_names == ("a", "b") and data.y_test.tolist() == [1, 0]
    np.savez(path, x=RNG.normal(size=(9, 4)), y=np.arange(9) % 3, x_test=RNG.normal(size=(3, 4)), y_test=[0, 1, 2])
    data = load_dataset(str(path))
    assert not data.is_image and data.in_shape == (4,) and len(data.x_test) == 3


def test_normalize_and_denormalize_are_inverse_for_images_and_tables(tmp_path):
    np.savez(tmp_path / "set.npz", x=RNG.integers(0, 256, (10, 3, 2, 2)), y=np.arange(10) % 2)
    images = load_dataset(str(tmp_path / "set.npz"))
    table = load_dataset("iris")
    for data in (images, table):
        x = data.x_test[:3]
        torch.testing.assert_close(data.normalize(data.denormalize(x)), x, atol=1e-5, rtol=0)
        raw = data.denormalize(x).numpy()
        torch.testing.assert_close(data.normalize(raw), x, atol=1e-5, rtol=0)  # numpy input too
        assert data.normalize(raw).dtype == torch.float32
    assert images.normalize(torch.zeros(2, 5, 3, 2, 2)).shape == (2, 5, 3, 2, 2)  # any leading dims
    with pytest.raises(ValueError, match=r"inputs must have shape \[\.\.\., 3, 2, 2\]"):
        images.normalize(torch.zeros(4, 2, 2))


def test_split_images_checks_its_input():
    with pytest.raises(ValueError, match="labels must have shape"):
        split_images(np.zeros((4, 2, 2)), np.zeros(3), name="x")
    with pytest.raises(ValueError, match="finite numbers"):
        split_images(np.full((4, 1, 2, 2), np.nan), np.arange(4) % 2, name="x")
    with pytest.raises(ValueError, match="at least 2 classes"):
        split_images(np.zeros((4, 2, 2)), np.zeros(4), name="x")


# ---------------------------------------------------------------- errors


def test_no_folder_given_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("MEMDISTILL_DATA", raising=False)
    with pytest.raises(ValueError, match="--data-root DIR.*MEMDISTILL_DATA") as error:
        load_dataset("cifar10")
    assert "data_batch_1.bin" in str(error.value)


def test_missing_files_name_the_files_and_every_folder_searched(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("mnist", root=tmp_path / "nowhere")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    assert all(f"{file}[.gz]" in message for file in MNIST_FILES)
    for folder in ("nowhere/mnist", "nowhere/MNIST/raw", "nowhere ("):
        assert str(tmp_path / folder) in message
    assert "--data-root DIR" in message and "MEMDISTILL_DATA" in message


def test_a_missing_file_is_named_with_its_folder(tmp_path):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"mnist \(lacks t10k-labels-idx1-ubyte\)"):
        load_dataset("mnist", root=tmp_path)


def test_the_pickled_python_version_of_cifar_is_never_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps({"data": [1]}))
    for name in ("cifar-10-batches-py", ""):
        with pytest.raises(DataNotFoundError, match="binary version"):
            load_dataset("cifar10", root=tmp_path / name)


def test_bad_magic_number(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.arange(8))  # a labels file in its place
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: bad magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "x").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(ValueError, match="bad magic number 0x12345678"):
        read_idx(tmp_path / "x")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-7])
    message = "corrupt or truncated gzip" if gz else r"size does not match the header: shape \[4, 5, 4\] needs 96 bytes"
    with pytest.raises(ValueError, match=rf"t10k-images-idx3-ubyte.*{message}"):
        load_dataset("mnist", root=tmp_path)
    write_idx(tmp_path / "short", np.zeros(3)).write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match="short: truncated header"):
        read_idx(tmp_path / "short")


def test_image_and_label_counts_must_agree(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(ValueError, match="holds 8 images but .*train-labels-idx1-ubyte 5 labels"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_or_wrong_cifar_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: size 6046 bytes is not a whole number of 3073-byte"):
        load_dataset("cifar10", root=tmp_path)
    path.write_bytes(cifar_records([0, 42])[0])
    with pytest.raises(ValueError, match="data_batch_3.bin: record 1 has label 42, expected 0 … 9"):
        load_dataset("cifar10", root=tmp_path)


def test_corrupt_png_is_named(tmp_path):
    write_image_folder(tmp_path)
    bad = tmp_path / "dog" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot read image .*dog/3\.png"):
        load_dataset(str(tmp_path))
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*dog/3\.png"):
        load_dataset(str(tmp_path))


def test_mixed_sizes_and_kinds_name_the_file(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    write_png(tmp_path / "cat" / "9.png", RNG.integers(0, 256, (7, 7, 3)))
    with pytest.raises(ValueError, match=r"cat/9\.png is 7×7 colour but .*ant/0\.png is 6×5 colour"):
        load_dataset(str(tmp_path))
    write_png(tmp_path / "cat" / "9.png", RNG.integers(0, 256, (5, 6)))
    with pytest.raises(ValueError, match=r"cat/9\.png is 6×5 grey"):
        load_dataset(str(tmp_path))


def test_unsupported_image_mode_is_named(tmp_path):
    write_image_folder(tmp_path, per_class=2, colour=False)
    Image.fromarray(np.full((5, 6), 40000, dtype=np.uint16)).save(tmp_path / "ant" / "deep.png")  # 16-bit grey
    with pytest.raises(ValueError, match=r"deep\.png has image mode"):
        load_dataset(str(tmp_path))


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class subfolders"):
        load_dataset(str(tmp_path / "empty"))
    write_image_folder(tmp_path / "set", per_class=2)
    (tmp_path / "set" / "zebra").mkdir()
    (tmp_path / "set" / "zebra" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*zebra has no PNG/JPEG images"):
        load_dataset(str(tmp_path / "set"))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 2, 2))}, r"has no array 'y' \(arrays: \['x'\]\)"),
        ({"x": np.zeros((4, 2, 2)), "y": np.zeros(4), "x_test": np.zeros((2, 2, 2))}, "has no array 'y_test'"),
        ({"x": np.zeros((4, 2, 2)), "y": np.zeros(3)}, r"array 'y' must have shape \[4\], got \[3\]"),
        ({"x": np.zeros(4), "y": np.zeros(4)}, r"array 'x' must be numbers of shape \[N, F\]"),
        ({"x": np.array(["a"] * 4), "y": np.zeros(4)}, "array 'x' must be numbers"),
        ({"x": np.zeros((4, 2)), "y": np.array([None] * 4, dtype=object)}, "cannot read array 'y'.*never unpickled"),
    ],
)
def test_bad_npz_names_file_and_array(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"bad\.npz.*{message}"):
        load_dataset(str(path))


def test_npz_that_is_a_pickle_or_missing(tmp_path):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"x": np.zeros((4, 2)), "y": np.zeros(4)}))
    with pytest.raises(ValueError, match=r"evil\.npz: not a readable \.npz archive.*pickled"):
        load_dataset(str(path))
    with pytest.raises(FileNotFoundError, match="no file at .*gone.npz"):
        load_dataset(str(tmp_path / "gone.npz"))


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'nope'.*'digits-images'.*ImageFolder folder"):
        load_dataset("nope")


def test_is_image_data_decides_without_loading(tmp_path):
    """Image sets and folders are images; a .npz by the dimensions in its x header (even compressed);
    tables, CSV files and missing or unreadable files are not."""
    np.savez(tmp_path / "pics.npz", x=np.zeros((4, 1, 8, 8)), y=np.zeros(4))
    np.savez_compressed(tmp_path / "grey.npz", x=np.zeros((4, 8, 8)), y=np.zeros(4))
    np.savez(tmp_path / "rows.npz", x=np.zeros((4, 3)), y=np.zeros(4))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "folder").mkdir()
    images = ["digits-images", "mnist", tmp_path / "pics.npz", tmp_path / "grey.npz", tmp_path / "folder"]
    others = ["moons", "digits", tmp_path / "rows.npz", tmp_path / "broken.npz", tmp_path / "none.npz", "t.csv"]
    assert [is_image_data(name) for name in images] == [True] * len(images)
    assert [is_image_data(name) for name in others] == [False] * len(others)
