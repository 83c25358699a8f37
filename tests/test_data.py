"""Data sets, architectures and evaluation helpers."""

import numpy as np
import pytest
import torch
from torch import nn

from memdistill.data import load_dataset, split_dataset
from memdistill.distill.evaluation import accuracy, bootstrap_ci, median_index, summarize
from memdistill.models import fresh_model, mlp


def test_moons_is_the_papers_split():
    data = load_dataset("moons")
    assert (len(data.x_train), len(data.x_test)) == (1000, 500)
    assert data.y_train.bincount().tolist() == [500, 500]
    assert data.classes == 2 and data.out_features == 1 and data.in_features == 2
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    torch.testing.assert_close(
        data.x_train.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        data.x_train.double().std(0, correction=0), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "name, classes, features",
    [("circles", 2, 2), ("blobs", 3, 2), ("breast_cancer", 2, 30), ("iris", 3, 4), ("wine", 3, 13)],
)
def test_other_sets_load_standardised_and_stratified(name, classes, features):
    data = load_dataset(name)
    assert (data.classes, data.in_features) == (classes, features)
    assert data.out_features == (1 if classes == 2 else classes)
    train_share = data.y_train.bincount() / len(data.y_train)
    test_share = data.y_test.bincount() / len(data.y_test)
    assert torch.allclose(train_share, test_share, atol=0.02)


def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("a,kind,b\n" + "".join(f"{i},{'yes' if i % 2 else 'no'},{i * i}\n" for i in range(30)))
    data = load_dataset(str(path), label="kind")
    assert data.class_names == ("no", "yes") and data.in_features == 2
    assert len(data.x_train) == 20 and len(data.x_test) == 10


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: load_dataset("mnist"), "unknown data set 'mnist'"),
        (lambda p: load_dataset(str(p), label="target"), "label column 'target' not in"),
        (lambda p: load_dataset(str(p)), "label must name the label column"),
        (lambda p: load_dataset(str(p.parent / "missing.csv"), label="y"), "must be an existing CSV file"),
        (lambda p: split_dataset(np.ones((6, 2)), np.zeros(6), name="x"), "at least 2 classes"),
        (lambda p: split_dataset(np.ones((6, 2)), np.zeros(5), name="x"), "labels must have shape"),
        (
            lambda p: split_dataset(np.where(np.eye(6, 2), np.nan, 1.0), np.arange(6) % 2, name="x"),
            "features must be finite numbers, got 2 NaN/inf values",
        ),
    ],
)
def test_bad_input_is_a_clear_value_error(tmp_path, call, message):
    path = tmp_path / "set.csv"
    path.write_text("a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match=message):
        call(path)


def _rows(n=12):
    """A valid CSV body: features a, b and label y (two classes), n rows."""
    return "".join(f"{i},{i * i},{i % 2}\n" for i in range(n))


@pytest.mark.parametrize(
    "content, label, message",
    [
        ("", "y", "is empty: expected a header row"),
        ("\n\n", "y", "is empty"),
        ("a,b,y\n", "y", "has 0 data row"),
        ("a,b,y\n" + _rows(), "target", r"label column 'target' not in .*; columns: \['a', 'b', 'y'\]"),
        ("a,b,y\n" + _rows(5) + "4,zebra,1\n" + _rows(5), "y",
         "line 7, column 'b': expected a number, got 'zebra'"),
        ("a,b,y\n" + _rows(3) + "nan,1,0\n" + _rows(5), "y", "line 5, column 'a': expected a finite number, got 'nan'"),
        ("a,b,y\n" + _rows(3) + "1,-inf,0\n", "y", "line 5, column 'b': expected a finite number, got '-inf'"),
        ("a,b,y\n" + _rows(3) + "1,,0\n", "y", "line 5, column 'b': expected a number, got ''"),
        ("a,b,y\n" + "".join(f"{i},{i},same\n" for i in range(9)), "y", "holds only the class 'same', expected at least 2"),
        ("a,b,y\n" + _rows(3) + "1,2\n", "y", "line 5 has 2 fields, expected 3"),
        ("a,b,y\n" + _rows(3) + "1,2,0,9\n", "y", "line 5 has 4 fields, expected 3"),
        ("a,b,y\n" + _rows(3) + "1,2,\n", "y", "line 5 has an empty label in column 'y'"),
        ("y,a,y\n" + _rows(4), "y", "has 2 columns named 'y'"),
        ("y\n0\n1\n", "y", "no feature columns besides the label column 'y'"),
        ("a,y\n1,0\n2,1\n3,1\n", "y", "cannot be split into train and test parts"),
    ],
)
def test_a_bad_csv_is_a_value_error_naming_the_file(tmp_path, content, label, message):
    path = tmp_path / "set.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(str(path), label=label)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("blob, message", [
    (b"a,y\n\xff\xfe\x00\x01,0\n", "is not a UTF-8 text file"),
    (b"a,y\n1\x00,0\n", "is not a readable CSV file|expected a number"),
])
def test_a_binary_file_is_not_read_as_csv(tmp_path, blob, message):
    path = tmp_path / "set.csv"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(str(path), label="y")
    assert str(path) in str(error.value)


def test_csv_reads_every_row_and_value(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("\ufeffa,y,b\n" + "".join(f" {i / 4},{'p' if i < 6 else 'q'},{-i}\n\n" for i in range(12)))
    from memdistill.data.tabular import read_csv

    features, labels = read_csv(path, "y")
    assert features.tolist() == [[i / 4, -i] for i in range(12)]
    assert labels.tolist() == ["p"] * 6 + ["q"] * 6


@pytest.mark.parametrize(
    "arch, widths",
    [("1-layer", [2, 1]), ("2-layer", [2, 10, 1]), ("4-layer", [2, 10, 10, 10, 1]), ([7, 3], [2, 7, 3, 1])],
)
def test_mlp_is_a_plain_sequential_of_linear_and_relu(arch, widths):
    model = mlp(arch)()
    assert type(model) is nn.Sequential
    linears = [m for m in model if type(m) is nn.Linear]
    assert [widths[0]] + [m.out_features for m in linears] == widths
    assert all(type(m) is nn.ReLU for m in model[1::2]) and type(model[-1]) is nn.Linear
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    for m in linears:
        assert float(m.weight.detach().abs().max()) <= (6 / (m.in_features + m.out_features)) ** 0.5


def test_mlp_xavier_variance_and_names():
    weights = torch.cat([mlp([100], in_features=100)()[0].weight.detach().flatten() for _ in range(5)])
    assert abs(float(weights.var()) - 2 / 200) < 1e-3
    assert mlp("2-layer").name == "2-layer" and mlp([32, 32]).name == "mlp[32,32]"


@pytest.mark.parametrize("arch", ["big", "0-layer", [4, 0], [2.5]])
def test_mlp_unknown_architecture(arch):
    with pytest.raises(ValueError, match="mlp: "):
        mlp(arch)


def test_fresh_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (fresh_model(mlp("4-layer"), seed) for seed in (3, 3, 4))
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_accuracy_binary_and_multiclass():
    binary = nn.Linear(1, 1)
    with torch.no_grad():
        binary.weight.fill_(1.0), binary.bias.zero_()
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    assert accuracy(binary, x, torch.tensor([0, 0, 1, 0])) == 0.75
    multi = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        multi.weight.copy_(torch.eye(3))
    assert accuracy(multi, torch.eye(3), torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_summary_and_bootstrap():
    values = [0.8, 0.9, 1.0, 0.85, 0.95]
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(0.9) and summary["std"] == pytest.approx(np.std(values, ddof=1))
    low, high = summary["ci95"]
    assert 0.8 <= low < 0.9 < high <= 1.0
    assert bootstrap_ci(values) == summary["ci95"]  # fixed seed: reproducible
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "ci95": [0.5, 0.5], "n": 1}
    assert median_index([0.3, 0.9, 0.1, 0.5]) == 0


def test_class_names_file_that_is_not_text_is_named(tmp_path):
    from memdistill.data.images import read_class_names

    path = tmp_path / "batches.meta.txt"
    path.write_text("cat\n\n dog \n")
    assert read_class_names(path) == ("cat", "dog")
    path.write_bytes(b"\xff\xfe\x00cat")
    with pytest.raises(ValueError, match=f"read_class_names: {path} must be a UTF-8 text file"):
        read_class_names(path)
