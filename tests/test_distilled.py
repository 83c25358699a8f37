"""DistilledData: validation, bit-exact atomic save/load."""

import os

import pytest
import safetensors.torch
import torch

from memdistill.distill.distilled import DistilledData


def make(dtype=torch.float32, soft=False):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, 2, generator=generator, dtype=dtype)
    y = (
        torch.rand(5, 8, 3, generator=generator, dtype=dtype)
        if soft
        else torch.randint(0, 2, (5, 8), generator=generator)
    )
    lrs = torch.rand(10, generator=generator, dtype=dtype) + 1e-3
    config = {"steps": 5, "epochs": 2, "momentum": 0.5, "archs": ["2-layer"], "nested": {"a": [1, 2]}}
    return DistilledData(x, y, lrs, config, seed=7, history=[0.7, 1 / 3, 1e-300, 0.1 + 0.2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("soft", [False, True])
def test_round_trip_is_bit_exact(tmp_path, dtype, soft):
    data = make(dtype, soft)
    path = data.save(tmp_path / "sub" / "data.safetensors")
    loaded = DistilledData.load(path)
    for name in ("x", "y", "lrs"):
        a, b = getattr(data, name), getattr(loaded, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.numpy().tobytes() == b.numpy().tobytes()
    assert (loaded.config, loaded.seed, loaded.history) == (data.config, data.seed, data.history)
    assert (loaded.steps, loaded.epochs, loaded.momentum) == (5, 2, 0.5)


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "data.safetensors"
    make().save(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    changed = make()
    changed.x.add_(1)
    with pytest.raises(OSError, match="disk full"):
        changed.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.safetensors"]


def test_invalid_data_is_refused(tmp_path):
    data = make()
    with pytest.raises(ValueError, match="must be finite"):
        DistilledData(data.x * float("nan"), data.y, data.lrs)
    with pytest.raises(ValueError, match="multiple of s = 5"):
        DistilledData(data.x, data.y, data.lrs[:7])
    with pytest.raises(ValueError, match="y must start with"):
        DistilledData(data.x, data.y[:4], data.lrs)
    other = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": data.x}, str(other))
    with pytest.raises(ValueError, match="was not written by DistilledData.save"):
        DistilledData.load(other)
    with pytest.raises(FileNotFoundError):
        DistilledData.load(tmp_path / "missing.safetensors")


def _rewrite_meta(path, edit):
    """The file at path with its memdistill metadata passed through ``edit`` (a dict → dict)."""
    import json

    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["memdistill"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    safetensors.torch.save_file(tensors, str(path), metadata={"memdistill": json.dumps(edit(meta))})


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable safetensors file"),
    (lambda p: p.write_text("x,y\n1,2\n"), "not a readable safetensors file"),
    (lambda p: p.write_bytes(b""), "not a readable safetensors file"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "format": "memdistill.DistilledData/9"}), "DistilledData/9"),
    (lambda p: _rewrite_meta(p, lambda m: {k: v for k, v in m.items() if k != "config"}), "'config'"),
])
def test_a_damaged_file_is_a_value_error_naming_it(tmp_path, damage, match):
    path = make().save(tmp_path / "d.safetensors")
    damage(path)
    with pytest.raises(ValueError, match=match) as error:
        DistilledData.load(path)
    assert str(path) in str(error.value)
