"""Training many fresh models at once (rows of θ [B, P]) against one model at a time."""

import dataclasses

import pytest
import torch

from memdistill.data import load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.evaluation import (
    accuracy,
    baseline_accuracies,
    distilled_accuracies,
    distilled_accuracies_of_sets,
    predict_rows,
    row_accuracies,
    train_full,
    train_full_many,
    train_full_rows,
)
from memdistill.distill.training import STRATEGIES, train_many, train_on, train_rows, train_sets
from memdistill.engine.steps.fused import FusedMLPStep
from memdistill.models import convnet, lenet, mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
SEEDS = range(3, 7)
# s1's default peak rate 0.78 with momentum 0.9 is a divergent regime in which rounding grows
# without bound (1e-10 after 100 steps); a gentler eta0 keeps the comparison about arithmetic.
GENTLE = dict(total_epochs=10, eta0=0.05)


def relative_error(many, one) -> float:
    return max(
        float(((p - q).abs().max() / q.abs().max()).detach())
        for a, b in zip(many, one)
        for p, q in zip(a.parameters(), b.parameters())
    )


def problem(in_shape, classes, dtype, momentum, fixed=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *in_shape, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (2, 6), generator=g)
    lrs = torch.rand(6, generator=g, dtype=dtype) * 0.2
    config = {"momentum": momentum, **({"theta0_seeds": [11, 12]} if fixed else {})}
    return DistilledData(x, y, lrs, config)


ARCHS = {"mlp": (mlp("4-layer"), (2,), 2), "lenet": (lenet((1, 8, 8), 3), (1, 8, 8), 3)}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("name", list(ARCHS))
def test_train_many_matches_train_on_in_float64(name, momentum, strategy):
    arch, in_shape, classes = ARCHS[name]
    data = problem(in_shape, classes, torch.float64, momentum)
    step, _, _ = train_rows(data, arch, SEEDS, strategy, **GENTLE)
    assert isinstance(step, FusedMLPStep) == (name == "mlp")
    assert name == "mlp" or step.batched, step.why
    many = train_many(data, arch, SEEDS, strategy, **GENTLE)
    one = [train_on(data, arch, strategy, seed, **GENTLE) for seed in SEEDS]
    assert relative_error(many, one) <= 1e-12
    assert all(p.dtype == torch.float64 for model in many for p in model.parameters())
    assert not torch.equal(many[0][0].weight, many[1][0].weight)


@pytest.mark.parametrize("name", list(ARCHS))
def test_float32_rows_are_close_and_accuracies_equal(name):
    arch, in_shape, classes = ARCHS[name]
    data = problem(in_shape, classes, torch.float32, 0.5)
    many = train_many(data, arch, SEEDS, "s3", **GENTLE)
    one = [train_on(data, arch, "s3", seed, **GENTLE) for seed in SEEDS]
    assert relative_error(many, one) <= 1e-4
    x_test = torch.randn(200, *in_shape, generator=torch.Generator().manual_seed(1))
    y_test = torch.randint(0, classes, (200,), generator=torch.Generator().manual_seed(2))
    assert [accuracy(m, x_test, y_test) for m in many] == [accuracy(m, x_test, y_test) for m in one]


def test_fixed_theta0_trains_every_model_from_it():
    data = problem((2,), 2, torch.float64, 0.5, fixed=True)
    many = train_many(data, mlp("2-layer"), SEEDS, "s2", **GENTLE)
    reference = train_on(data, mlp("2-layer"), "s2", 0, **GENTLE)
    assert relative_error(many, [reference] * len(many)) <= 1e-12
    assert all(torch.equal(many[0][0].weight, m[0].weight) for m in many)


def test_architectures_with_buffers_train_one_at_a_time():
    arch = convnet((1, 8, 8), 3, width=4, depth=1, norm="batch")
    data = problem((1, 8, 8), 3, torch.float32, 0.0)
    assert train_rows(data, arch, SEEDS) is None
    many = train_many(data, arch, SEEDS, None)
    one = [train_on(data, arch, None, seed) for seed in SEEDS]
    for a, b in zip(many, one):
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(p, q)


@pytest.mark.parametrize("name", list(ARCHS))
def test_row_accuracies_match_accuracy(name):
    arch, in_shape, classes = ARCHS[name]
    data = problem(in_shape, classes, torch.float32, 0.0)
    step, theta, _ = train_rows(data, arch, SEEDS, "s1", **GENTLE)
    models = train_many(data, arch, SEEDS, "s1", **GENTLE)
    x = torch.randn(100, *in_shape, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, classes, (100,), generator=torch.Generator().manual_seed(4))
    expected = [accuracy(m, x, y) for m in models]
    assert row_accuracies(step, theta, x, y) == expected
    assert torch.equal(predict_rows(step, theta, x, batched=True), predict_rows(step, theta, x))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_distilled_accuracies_equal_one_model_at_a_time(strategy):
    g = torch.Generator().manual_seed(5)
    data = DistilledData(torch.randn(4, 4, 2, generator=g), torch.tensor([[0, 0, 1, 1]] * 4),
                         torch.full((8,), 0.05), {"momentum": 0.5})
    new = distilled_accuracies(data, MOONS, mlp("4-layer"), strategy, inits=3, seed=2, total_epochs=10)
    old = [
        accuracy(train_on(data, mlp("4-layer"), strategy, 2 + i, total_epochs=10), MOONS.x_test, MOONS.y_test)
        for i in range(3)
    ]
    assert new == old


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("batch_size", [None, 300])
def test_full_data_rows_match_train_full(momentum, batch_size):
    training = dict(epochs=20, lr=0.1, batch_size=batch_size, momentum=momentum)
    many = train_full_many(MOONS, mlp("2-layer"), SEEDS, **training)
    one = [train_full(MOONS, mlp("2-layer"), seed, **training) for seed in SEEDS]
    assert relative_error(many, one) <= 1e-5  # float32: the fused step sums in another order
    new = baseline_accuracies(MOONS, mlp("2-layer"), inits=3, seed=3, **training)
    assert new == [accuracy(m, MOONS.x_test, MOONS.y_test) for m in one[:3]]


def test_full_data_rows_with_max_steps_and_the_generic_step():
    arch = lenet((1, 8, 8), 3)
    g = torch.Generator().manual_seed(6)
    dataset = dataclasses.replace(
        MOONS, x_train=torch.randn(40, 1, 8, 8, generator=g), y_train=torch.randint(0, 3, (40,), generator=g)
    )
    step, theta, _ = train_full_rows(dataset, arch, SEEDS, epochs=3, batch_size=16, max_steps=5)
    assert step.per_model and step.batched, step.why
    one = [train_full(dataset, arch, seed, epochs=3, batch_size=16, max_steps=5) for seed in SEEDS]
    many = train_full_many(dataset, arch, SEEDS, epochs=3, batch_size=16, max_steps=5)
    assert relative_error(many, one) <= 1e-5


def sets(in_shape, classes, dtype, momentum, count=3, soft=False):
    """``count`` distilled sets of one shape with different images, labels and rates."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        x = torch.randn(2, 6, *in_shape, generator=g, dtype=dtype)
        y = (torch.rand(2, 6, classes, generator=g, dtype=dtype).softmax(-1) if soft
             else torch.randint(0, classes, (2, 6), generator=g))
        lrs = torch.rand(6, generator=g, dtype=dtype) * 0.2
        out.append(DistilledData(x, y, lrs, {"momentum": momentum, **({"theta0_seeds": [20 + i]} if i == 1 else {})}))
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("soft", [False, True], ids=["ids", "soft"])
def test_sets_trained_together_have_the_bits_of_each_set_alone(strategy, momentum, dtype, soft):
    """Restarts' distilled sets (one with a fixed θ0) trained as the rows of one computation equal
    each set's own batched training bit for bit, in float32 too (the fused step's rows do not
    depend on their neighbours; a per-row rate multiplies as the shared scalar does)."""
    arch, in_shape, classes = mlp("4-layer", 2, 3), (2,), 3
    datas = sets(in_shape, classes, dtype, momentum, soft=soft)
    seeds = [range(0, 4), range(4, 7), range(7, 12)]
    step, theta = train_sets(datas, arch, seeds, strategy, **GENTLE)
    alone = torch.cat([train_rows(d, arch, s, strategy, **GENTLE)[1] for d, s in zip(datas, seeds)])
    assert isinstance(step, FusedMLPStep) and theta.shape == alone.shape
    assert torch.equal(theta, alone)
    assert not torch.equal(theta[0], theta[4])


def test_sets_of_a_convnet_train_together_as_each_alone_in_float64():
    arch, in_shape, classes = ARCHS["lenet"]
    datas = sets(in_shape, classes, torch.float64, 0.9)
    seeds = [range(0, 2), range(2, 4), range(4, 5)]
    step, theta = train_sets(datas, arch, seeds, "s3", **GENTLE)
    alone = torch.cat([train_rows(d, arch, s, "s3", **GENTLE)[1] for d, s in zip(datas, seeds)])
    assert step.per_model and step.batched, step.why
    assert float((theta - alone).abs().max() / alone.abs().max()) <= 1e-12


def test_accuracies_of_sets_equal_each_set_evaluated_alone():
    datas = [dataclasses.replace(d, x=d.x.float(), lrs=d.lrs.float()) for d in sets((2,), 2, torch.float64, 0.0)]
    arch = mlp("2-layer", 2, 1)
    got = distilled_accuracies_of_sets(datas, MOONS, arch, "s2", inits=3, total_epochs=10)
    assert got == [distilled_accuracies(d, MOONS, arch, "s2", inits=3, seed=3 * i, total_epochs=10)
                   for i, d in enumerate(datas)]
    assert len({tuple(a) for a in got}) == 3


def test_sets_of_other_shapes_are_refused():
    datas = sets((2,), 2, torch.float64, 0.0)
    datas[2] = dataclasses.replace(datas[2], lrs=datas[2].lrs[:4])
    with pytest.raises(ValueError, match="train_sets: the distilled sets differ in lrs"):
        train_sets(datas, mlp("1-layer"), [range(2)] * 3)
