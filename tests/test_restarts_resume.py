"""Batched restarts equal separate runs; a checkpointed run resumes to the same bits."""
from __future__ import annotations

import pytest
import torch
from conftest import interrupted_at_outer_step
from torch import nn

from memdistill.data import load_dataset
from memdistill.distill.batching import hypergradients, shape_groups
from memdistill.distill.distiller import Distiller
from memdistill.distill.training import mlp_rows, plain_mlp, stack_rows
from memdistill.engine.hypergradient import hypergradient, make_step
from memdistill.models import fresh_model, mlp, resolve_arch

torch.set_num_threads(1)
MOONS = load_dataset("moons")
TINY = dict(steps=3, epochs=2, per_class=2, progress=False)
ARCHS = [mlp("1-layer"), mlp("2-layer"), mlp("2-layer")]


def fit(seed=0, outer_epochs=2, checkpoint=None, save_every=50, resume=False, on_step=None, archs=ARCHS, **options):
    distiller = Distiller(archs, **{**TINY, "seed": seed, **options})
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=outer_epochs, batch_size=250,
                         checkpoint=checkpoint, save_every=save_every, resume=resume, on_step=on_step)


def same_bits(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x", "y", "lrs")) and a.history == b.history


@pytest.mark.parametrize("options", [dict(), dict(soft_labels=True, method="reversible", momentum=0.9)])
def test_restarts_equal_separate_runs_bit_for_bit(options):
    batched = Distiller(ARCHS, **TINY, seed=5, restarts=3, **options).fit(
        MOONS.x_train, MOONS.y_train, outer_epochs=1, batch_size=250)
    assert len(batched) == 3 and [d.seed for d in batched] == [5, 6, 7]
    for r, data in enumerate(batched):
        alone = Distiller(ARCHS, **TINY, seed=5 + r, **options).fit(
            MOONS.x_train, MOONS.y_train, outer_epochs=1, batch_size=250)
        assert same_bits(data, alone) and data.config == alone.config
    assert not torch.equal(batched[0].x, batched[1].x)


def test_batched_rows_equal_single_hypergradients_for_mixed_modules():
    torch.manual_seed(0)
    models = [mlp("2-layer")().double(), nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double(),
              mlp("2-layer")().double(), mlp("1-layer")().double()]
    assert shape_groups(models) == [[0, 2], [1], [3]]
    x_syn, y_syn = torch.randn(4, 3, 4, 2, dtype=torch.float64), torch.randint(0, 2, (4, 3, 4))
    lrs = 0.05 + 0.1 * torch.rand(4, 6, dtype=torch.float64)
    x, y = torch.randn(4, 10, 2, dtype=torch.float64), torch.randint(0, 2, (4, 10))
    rows = hypergradients(models, x_syn, y_syn, lrs, x, y, epochs=2, momentum=0.9)
    for i, model in enumerate(models):
        ref = hypergradient(model, x_syn[i], y_syn[i], lrs[i], x[i], y[i], epochs=2, momentum=0.9, method="autograd")
        torch.testing.assert_close(rows.loss[i], ref.loss, rtol=1e-9, atol=0)
        torch.testing.assert_close(rows.grad_x[i], ref.grad_x_syn, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(rows.grad_lrs[i], ref.grad_lrs, rtol=1e-9, atol=1e-12)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    full = fit(outer_epochs=3)
    state = tmp_path / "state.pt"
    # Interrupt the checkpointed run in its 6th of 12 outer steps (the SIGKILL version of this
    # test runs a whole batch job in a subprocess: tests/test_batch.py).
    with interrupted_at_outer_step(6):
        fit(outer_epochs=3, checkpoint=state, save_every=1)
    resumed = fit(outer_epochs=3, checkpoint=state, save_every=1, resume=True)
    assert same_bits(resumed, full)
    assert same_bits(fit(outer_epochs=3, checkpoint=state, resume=True), full)  # finished: returns at once


def test_checkpoint_errors(tmp_path):
    state = tmp_path / "state.pt"
    fit(outer_epochs=1, checkpoint=state)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        fit(outer_epochs=1, checkpoint=state)
    with pytest.raises(ValueError, match=r"belongs to a different run \(outer_epochs: saved 1 vs now 2"):
        fit(outer_epochs=2, checkpoint=state, resume=True)
    with pytest.raises(ValueError, match="belongs to a different run .*seed"):
        fit(seed=1, outer_epochs=1, checkpoint=state, resume=True)
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match="is corrupt or not a memdistill state"):
        fit(outer_epochs=1, checkpoint=state, resume=True)
    with pytest.raises(ValueError, match="save_every must be an int >= 1"):
        fit(outer_epochs=1, checkpoint=tmp_path / "other.pt", save_every=0)
    with pytest.raises(ValueError, match="restarts must be None or an int >= 1"):
        Distiller(ARCHS, restarts=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_theta0_rows_have_the_bits_of_fresh_models(dtype):
    seeds = [0, 1, 12345, 2**62 - 1]
    for arch in (mlp("1-layer"), mlp("4-layer"), mlp([7, 3], 5, 3), resolve_arch("2-layer", (2,), 2)):
        models = [fresh_model(arch, seed, dtype) for seed in seeds]
        expected = stack_rows(make_step(models[0], None), models)
        got = mlp_rows(plain_mlp(arch), seeds, dtype)
        assert got.dtype == dtype and torch.equal(got, expected)
    assert plain_mlp(lambda: mlp("2-layer")()) is None


def test_drawn_theta0_rows_give_the_bits_of_built_models():
    """The Distiller draws the θ0 rows of MLPs directly; factories it cannot see into (here the
    same MLPs behind lambdas) build every model: the same distillation, bit for bit."""
    rows = fit(outer_epochs=1, restarts=2, soft_labels=True)
    built = Distiller([lambda arch=arch: arch() for arch in ARCHS], **TINY, restarts=2, soft_labels=True).fit(
        MOONS.x_train, MOONS.y_train, outer_epochs=1, batch_size=250)
    assert all(same_bits(a, b) for a, b in zip(rows, built))


def test_on_step_is_called_after_every_outer_step():
    seen = []
    fit(outer_epochs=2, on_step=seen.append)
    assert seen == list(range(1, 9))  # 2 outer epochs × ⌈1,000 / 250⌉ batches


def test_restarts_equal_separate_runs_when_the_rows_are_long():
    """R·n ≥ 32: softplus and sigmoid round by position in torch's vector loops, so η̃ and soft
    labels must be formed one restart at a time for batched restarts to equal separate runs."""
    options = dict(steps=5, epochs=8, per_class=2, progress=False, soft_labels=True, momentum=0.5)
    batched = Distiller(ARCHS[:1], **options, seed=3, restarts=4).fit(MOONS.x_train, MOONS.y_train,
                                                                       outer_steps=2, batch_size=250)
    for r, data in enumerate(batched):
        alone = Distiller(ARCHS[:1], **options, seed=3 + r).fit(MOONS.x_train, MOONS.y_train, outer_steps=2,
                                                                 batch_size=250)
        assert same_bits(data, alone)


def test_tiny_outer_steps_run_on_one_thread_and_restore_the_count(monkeypatch):
    seen, original = [], Distiller._outer_step
    monkeypatch.setattr(Distiller, "_outer_step", lambda self, *a: (seen.append(torch.get_num_threads()),
                                                                    original(self, *a))[1])
    torch.set_num_threads(2)
    try:
        fit(outer_epochs=1)  # 2-layer MLPs, b = 4: B · b · widest far below SERIAL_WORK
        assert seen == [1] * 4 and torch.get_num_threads() == 2
        seen.clear()
        fit(outer_epochs=1, archs=[lambda: nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))])
        assert seen == [2] * 4  # the generic step: threads left as they are
    finally:
        torch.set_num_threads(1)
