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


def test_csv_with_nan_feature_is_refused(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("a,y\n" + "".join(f"{'nan' if i == 3 else i},{i % 2}\n" for i in range(9)))
    with pytest.raises(ValueError, match="first at row 3, column 0"):
        load_dataset(str(path), label="y")


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
