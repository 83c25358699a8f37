"""The Distiller on images: x̃ [s, b, C, H, W], real or noise init, random or fixed θ0, the grid."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.outer import balanced_labels, real_init
from memdistill.distill.training import train_on


class TinyConv:
    """conv3×3(2) → ReLU → flatten → linear: a small image model with the factory convention."""

    name = "tinyconv"

    def __call__(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def images(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n 1×4×4 images of 3 classes, class c brighter in row c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3
    x[torch.arange(n), 0, y] += 1.0
    return x, y


def test_real_init_draws_real_objects_of_each_slots_class():
    x, y = images()
    labels = balanced_labels(2, 2, 3)
    init = real_init(labels, x, y, torch.Generator().manual_seed(1))
    assert init.shape == (2, 6, 1, 4, 4)
    for i in range(2):
        for j in range(6):
            matches = (x == init[i, j]).flatten(1).all(1).nonzero().flatten()
            assert len(matches) == 1 and int(y[matches[0]]) == int(labels[i, j])


def test_real_init_repeats_only_when_a_class_has_too_few_objects():
    x, y = images(6)  # two objects per class, four slots per class
    init = real_init(balanced_labels(2, 2, 3), x, y, torch.Generator().manual_seed(0))
    flat = init.flatten(2)
    distinct = {tuple(row.tolist()) for row in flat.reshape(-1, flat.shape[-1])}
    assert len(distinct) == 6


def test_distiller_on_images_real_init_learns_and_keeps_the_shape(device):
    x, y = images()
    distiller = Distiller([TinyConv()], steps=3, epochs=2, per_class=1, init="real", init_lr=0.1,
                          outer_lr=0.05, progress=False, device=device)
    data = distiller.fit(x.to(device), y.to(device), outer_epochs=8, batch_size=30)
    assert data.x.shape == (3, 3, 1, 4, 4) and data.lrs.shape == (6,) and data.x.device.type == "cpu"
    assert data.config["init"] == "real" and data.config["theta0"] == "random"
    assert sum(data.history[-4:]) < sum(data.history[:4])
    model = train_on(data, TinyConv(), seed=0, device=device)
    assert next(model.parameters()).device.type == device


def test_fixed_theta0_is_one_init_for_the_whole_run_and_train_on_starts_from_it():
    x, y = images()
    kwargs = dict(steps=2, epochs=1, per_class=1, progress=False, theta0="fixed", seed=3)
    data = Distiller([TinyConv()], **kwargs).fit(x, y, outer_epochs=2, batch_size=30)
    seeds = data.config["theta0_seeds"]
    assert len(seeds) == 1
    a, b = train_on(data, TinyConv(), seed=0), train_on(data, TinyConv(), seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    random = Distiller([TinyConv()], **{**kwargs, "theta0": "random"}).fit(x, y, outer_epochs=2, batch_size=30)
    assert "theta0_seeds" not in random.config
    assert not torch.equal(random.x, data.x)


def test_fixed_theta0_and_real_init_resume_bit_for_bit(tmp_path, monkeypatch):
    x, y = images()
    kwargs = dict(steps=2, epochs=2, per_class=1, progress=False, theta0="fixed", init="real")

    def fit(**more):
        return Distiller([TinyConv()], **kwargs).fit(x, y, outer_epochs=4, batch_size=30, **more)

    whole, state, original, calls = fit(), tmp_path / "s.pt", Distiller._outer_step, {"n": 0}

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Distiller, "_outer_step", failing)
    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint=state, save_every=1)
    monkeypatch.setattr(Distiller, "_outer_step", original)
    resumed = fit(checkpoint=state, resume=True)
    assert torch.equal(resumed.x, whole.x) and torch.equal(resumed.lrs, whole.lrs)
    assert resumed.history == whole.history and resumed.config == whole.config


def test_unknown_init_and_theta0_are_named():
    for key, value in (("init", "zeros"), ("theta0", "frozen")):
        try:
            Distiller([TinyConv()], **{key: value})
        except ValueError as error:
            assert key in str(error) and value in str(error)
        else:
            raise AssertionError(f"{key}={value} accepted")


def test_save_grid_writes_a_png_of_steps_by_objects(tmp_path):
    x, y = images()
    data = Distiller([TinyConv()], steps=3, epochs=2, per_class=2, init="real", progress=False).fit(
        x, y, outer_epochs=1, batch_size=60)
    data.config.update(mean=[0.5], std=[2.0], class_names=["zero", "one", "two"])
    path = data.save_grid(tmp_path / "grid.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height  # 6 columns, 3 rows
    assert not list(tmp_path.glob(".*tmp"))


def test_save_grid_rejects_non_images(tmp_path):
    data = DistilledData(x=torch.zeros(2, 4, 3), y=torch.zeros(2, 4, dtype=torch.int64), lrs=torch.ones(2))
    try:
        data.save_grid(tmp_path / "grid.png")
    except ValueError as error:
        assert "[s, b, C, H, W]" in str(error)
    else:
        raise AssertionError("a tabular DistilledData drew a grid")
    assert not (tmp_path / "grid.png").exists()
