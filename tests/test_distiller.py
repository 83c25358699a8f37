"""Distiller (Algorithm 1): determinism, learning, soft labels, divergence and bad input."""

import math

import pytest
import torch

from memdistill.data import load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import accuracy, distilled_accuracies
from memdistill.distill.outer import balanced_labels, inverse_softplus, soft_label_logits
from memdistill.distill.training import run_inner_loop
from memdistill.models import fresh_model, mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
TINY = dict(steps=3, epochs=2, per_class=2, progress=False)


def tiny_fit(archs=(mlp("1-layer"), mlp("2-layer")), seed=0, **options) -> DistilledData:
    distiller = Distiller(list(archs), **{**TINY, "seed": seed, **options})
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=1, batch_size=250)


def test_helpers():
    assert balanced_labels(2, 2, 3).tolist() == [[0, 0, 1, 1, 2, 2]] * 2
    assert torch.nn.functional.softplus(
        torch.tensor(inverse_softplus(0.02), dtype=torch.float64)
    ).item() == pytest.approx(0.02, rel=1e-12)
    assert torch.sigmoid(soft_label_logits(torch.tensor([0, 1]), 1, torch.float64)).tolist() == pytest.approx(
        [0.1, 0.9]
    )
    probs = torch.softmax(soft_label_logits(torch.tensor([2]), 3, torch.float64), -1)
    assert probs[0].tolist() == pytest.approx([0.05, 0.05, 0.9])


def test_shapes_history_and_config():
    data = tiny_fit()
    assert data.x.shape == (3, 4, 2) and data.y.tolist() == [[0, 0, 1, 1]] * 3
    assert data.lrs.shape == (6,) and bool((data.lrs > 0).all())
    assert len(data.history) == 4 and all(math.isfinite(v) for v in data.history)
    assert data.config["archs"] == ["1-layer", "2-layer"] and data.config["epochs"] == 2
    assert not torch.allclose(data.lrs, torch.full((6,), 0.02))  # the rates were learned


def test_same_seed_same_bits_different_seed_different_data():
    first, again, other = tiny_fit(seed=3), tiny_fit(seed=3), tiny_fit(seed=4)
    for name in ("x", "y", "lrs"):
        assert getattr(first, name).numpy().tobytes() == getattr(again, name).numpy().tobytes()
    assert first.history == again.history
    assert not torch.equal(first.x, other.x)


def test_global_rng_is_untouched():
    state = torch.random.get_rng_state()
    tiny_fit()
    assert torch.equal(state, torch.random.get_rng_state())


def test_outer_loss_decreases():
    distiller = Distiller([mlp("2-layer")] * 2, steps=5, epochs=2, per_class=2, outer_lr=0.1, progress=False)
    data = distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=5, batch_size=100)
    assert sum(data.history[-10:]) / 10 < 0.6 * sum(data.history[:10]) / 10


def _real_points(dataset, seed: int, steps: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """steps × (per_class of each class) random training points, shaped like distilled data."""
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(dataset.y_train == c).squeeze(1) for c in range(dataset.classes)]
    rows = [
        torch.cat([p[torch.randperm(len(p), generator=generator)[:per_class]] for p in picks])
        for _ in range(steps)
    ]
    index = torch.stack(rows)
    return dataset.x_train[index], dataset.y_train[index]


@pytest.mark.parametrize("seed", [0, 1])
def test_distilled_data_beats_as_many_random_real_points(seed):
    """Circles, 2-layer: 20 distilled objects vs 20 random real points, same 10 SGD steps. The
    real points get the best of five constant learning rates, chosen on the test set."""
    circles, arch = load_dataset("circles"), mlp("2-layer")
    distiller = Distiller([arch] * 2, steps=5, epochs=2, per_class=2, outer_lr=0.1, seed=seed, progress=False)
    data = distiller.fit(circles.x_train, circles.y_train, outer_epochs=6, batch_size=100)
    distilled = sum(distilled_accuracies(data, circles, arch, None, inits=10, seed=100)) / 10

    def real(lr: float) -> float:
        models = [
            run_inner_loop(fresh_model(arch, 100 + i), *_real_points(circles, i, 5, 2), torch.full((10,), lr))
            for i in range(10)
        ]
        return sum(accuracy(m, circles.x_test, circles.y_test) for m in models) / 10

    best_real = max(real(lr) for lr in (0.02, 0.1, 0.3, 1.0, 3.0))
    assert distilled > best_real + 0.1, (distilled, best_real)


@pytest.mark.parametrize("classes, outputs", [(2, 1), (3, 3)])
def test_soft_labels_are_learned_probabilities(classes, outputs):
    """The soft labels start at 0.9 on each object's class and move by Adam steps: each free logit
    by at most outer_lr · (1 − β1)/√(1 − β2) per outer step (Kingma & Ba 2015, §2.1)."""
    dataset = MOONS if classes == 2 else load_dataset("blobs")
    distiller = Distiller([mlp("2-layer", out_features=outputs)], soft_labels=True, outer_lr=0.01, **TINY)
    data = distiller.fit(dataset.x_train, dataset.y_train, outer_epochs=1, batch_size=250)
    assert data.y.is_floating_point() and data.y.shape == (
        (3, 2 * classes) if outputs == 1 else (3, 2 * classes, 3)
    )
    labels = balanced_labels(3, 2, classes)
    start = soft_label_logits(labels, outputs, torch.float64)
    y = data.y.double()
    if outputs == 1:  # the logit u of sigmoid(u) = y, against its start
        moved = torch.log(y / (1 - y)) - start
        assert torch.equal(y > 0.5, labels.bool())
    else:  # softmax logits are free up to a constant per object: compare differences to class 0
        moved = (torch.log(y) - torch.log(y[..., :1])) - (start - start[..., :1])
        assert torch.equal(y.argmax(-1), labels)
    steps = len(data.history)
    assert steps == 4
    bound = steps * 0.01 * (1 - 0.9) / (1 - 0.999) ** 0.5 * (1 if outputs == 1 else 2)
    assert 1e-4 < float(moved.abs().max()) <= bound * (1 + 1e-4), (float(moved.abs().max()), bound)


def test_divergence_raises_a_clear_error():
    distiller = Distiller([mlp("4-layer")], steps=5, epochs=4, init_lr=1e6, progress=False)
    with pytest.raises(
        FloatingPointError, match=r"Distiller: at outer step 0 .*Lower init_lr \(now 1000000.0\)"
    ):
        distiller.fit(MOONS.x_train * 1e3, MOONS.y_train, outer_epochs=1, batch_size=500)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(archs=[]), "archs must be a non-empty list"),
        (dict(per_class=0), "per_class must be an int >= 1, got 0"),
        (dict(steps=2.5), "steps must be an int >= 1"),
        (dict(method="magic"), "unknown method 'magic'"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(init_lr=-0.1), "init_lr must be positive"),
        (dict(dtype=torch.int64), "dtype must be a floating dtype"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distiller(**{"archs": [mlp("1-layer")], **kwargs})


@pytest.mark.parametrize(
    "x, y, archs, message",
    [
        (MOONS.x_train, torch.zeros(1000, dtype=torch.int64), None, "at least 2 classes"),
        (
            torch.where(torch.rand(1000, 2) < 0.01, float("nan"), MOONS.x_train),
            MOONS.y_train,
            None,
            "X must be finite",
        ),
        (MOONS.x_train, MOONS.y_train.float(), None, "y must be integer class ids"),
        (MOONS.x_train, MOONS.y_train[:10], None, r"shape \[1000\]"),
        (
            MOONS.x_train,
            MOONS.y_train,
            [mlp("1-layer"), mlp("1-layer", out_features=2)],
            "same number of outputs",
        ),
        (MOONS.x_train, MOONS.y_train, [mlp("1-layer", out_features=3)], "expected 1 \\(a logit\\) or 2"),
    ],
)
def test_bad_real_data(x, y, archs, message):
    with pytest.raises(ValueError, match=message):
        Distiller(archs or [mlp("1-layer")], **TINY).fit(x, y, outer_epochs=1, batch_size=500)


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, strategy, test_arch, target",
    [("2-layer", None, "2-layer", 0.92), ("mixed", "s1", "4-layer", 0.95)],
)
def test_paper_settings_reach_the_targets(source, strategy, test_arch, target):
    """The issue's targets with the paper's settings (s = 40, e = 5, m = 3, 800 outer steps)."""
    archs = [mlp(a) for a in ("1-layer", "2-layer", "4-layer")] if source == "mixed" else [mlp(source)] * 3
    data = Distiller(archs, progress=False).fit(MOONS.x_train, MOONS.y_train, outer_epochs=50, batch_size=64)
    accs = distilled_accuracies(data, MOONS, mlp(test_arch), strategy, inits=5)
    assert sum(accs) / len(accs) >= target, accs


def test_every_engine_method_distils_the_same_data():
    """float64, momentum 0.5: the engine's methods agree, so the distilled data do too."""
    runs = {
        method: tiny_fit(method=method, momentum=0.5, dtype=torch.float64)
        for method in ("autograd", "replay", "checkpoint", "reversible")
    }
    reference = runs.pop("autograd")
    for data in runs.values():
        torch.testing.assert_close(data.x, reference.x, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(data.lrs, reference.lrs, rtol=1e-7, atol=1e-9)
    assert reference.x.dtype == torch.float64 and reference.config["momentum"] == 0.5


@pytest.mark.parametrize("memory, methods", [(None, ["replay", "replay"]), ("400B", ["checkpoint", "replay"])])
def test_plans_say_what_auto_ran_in_each_sweep_of_the_last_outer_step(memory, methods):
    """One plan per sweep: the two 2-layer models share one (2 × 41 floats a state), the 1-layer
    model (3 floats) has its own. All n = 6 states fit the default budget (replay); in 400 bytes
    only the small model's do, and the pair checkpoints."""
    distiller = Distiller([mlp("2-layer"), mlp("1-layer"), mlp("2-layer")], **TINY, method="auto", memory=memory)
    assert distiller.plans == []
    distiller.fit(MOONS.x_train, MOONS.y_train, outer_steps=1, batch_size=250)
    assert [plan.method for plan in distiller.plans] == methods
    assert [plan.steps for plan in distiller.plans] == [6, 6]
