"""Batched restarts equal separate runs; a checkpointed run resumes to the same bits."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from memdistill.data import load_dataset
from memdistill.distill.batching import hypergradients, shape_groups
from memdistill.distill.distiller import Distiller
from memdistill.engine.hypergradient import hypergradient
from memdistill.models import mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
TINY = dict(steps=3, epochs=2, per_class=2, progress=False)
ARCHS = [mlp("1-layer"), mlp("2-layer"), mlp("2-layer")]


def fit(seed=0, outer_epochs=2, checkpoint=None, save_every=50, resume=False, **options):
    distiller = Distiller(ARCHS, **{**TINY, "seed": seed, **options})
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=outer_epochs, batch_size=250,
                         checkpoint=checkpoint, save_every=save_every, resume=resume)


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
    calls = {"n": 0}
    original = Distiller._outer_step

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, *args)

    Distiller._outer_step = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(outer_epochs=3, checkpoint=state, save_every=1)
    finally:
        Distiller._outer_step = original
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
