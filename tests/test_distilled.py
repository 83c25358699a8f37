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


def _rewrite_tensors(path, edit, metadata=None):
    """The file at path with its tensors passed through ``edit`` (a dict → dict), its metadata
    kept (or replaced by ``metadata``)."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() if metadata is None else metadata
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    safetensors.torch.save_file({k: v.contiguous() for k, v in edit(tensors).items()}, str(path), metadata=metadata)


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable safetensors file"),
    (lambda p: p.write_text("x,y\n1,2\n"), "not a readable safetensors file"),
    (lambda p: p.write_bytes(b""), "not a readable safetensors file"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "format": "memdistill.DistilledData/9"}), "DistilledData/9"),
    (lambda p: _rewrite_meta(p, lambda m: {k: v for k, v in m.items() if k != "config"}), "'config'"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "format": "memdistill.DistilledData/2"}),
     "comes from a newer memdistill: upgrade"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "seed": "7"}), "'seed' must be a JSON int, got str"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "config": [1]}), "'config' must be a JSON dict, got list"),
    (lambda p: _rewrite_meta(p, lambda m: {**m, "history": [0.5, "x"]}), "'history' must be a list of numbers"),
    (lambda p: _rewrite_meta(p, lambda m: [m]), "must be a JSON object with a 'format'"),
    (lambda p: _rewrite_tensors(p, lambda t: t, metadata={"memdistill": "{oops"}), "memdistill metadata is not JSON"),
    (lambda p: _rewrite_tensors(p, lambda t: {k: v for k, v in t.items() if k != "lrs"}), r"missing \['lrs'\]"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "extra": t["x"].clone()}), r"unexpected \['extra'\]"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "lrs": t["lrs"][:7]}), r"multiple of s = 5 values, got .* \[7\]"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "lrs": t["lrs"].view(2, 5)}), "lrs must be a 1-D floating"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "x": t["x"][:, :, 0]}), r"x must be a floating tensor \[s, b"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "x": t["x"].to(torch.int32)}), "x must be a floating tensor"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "y": t["y"][:3]}), r"y must start with x's \[s, b\] = \[5, 8\]"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "y": t["y"].to(torch.int32)}), "y must be int64 class ids"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "lrs": t["lrs"].to(torch.int64)}), "lrs must be a 1-D floating"),
    (lambda p: _rewrite_tensors(p, lambda t: {**t, "x": t["x"] * float("inf")}), "must be finite"),
])
def test_a_damaged_file_is_a_value_error_naming_it(tmp_path, damage, match):
    path = make().save(tmp_path / "d.safetensors")
    damage(path)
    with pytest.raises(ValueError, match=match) as error:
        DistilledData.load(path)
    assert str(path) in str(error.value)


def test_a_file_that_is_a_folder_or_missing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at .*missing.safetensors"):
        DistilledData.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=f"no file at '{tmp_path}'"):
        DistilledData.load(tmp_path)


@pytest.mark.parametrize("cut", [1, 8, 9, 100, -1])
def test_every_truncation_is_refused(tmp_path, cut):
    path = make().save(tmp_path / "d.safetensors")
    blob = path.read_bytes()
    path.write_bytes(blob[:cut] if cut > 0 else blob[:cut - 4])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        DistilledData.load(path)


@pytest.mark.parametrize("soft", [False, True])
def test_repr_is_one_line_summary(soft):
    data = make(soft=soft)
    data.history = [0.5] * 10_000
    text = repr(data)
    assert "\n" not in text and len(text) < 300
    label = "[5, 8, 3] soft" if soft else "[5, 8] class-id"
    assert text == (f"DistilledData(x=[5, 8, 2] float32, y={label}, lrs=10 (s=5 × e=2), momentum=0.5, "
                    "archs=['2-layer'], seed=7, outer_steps=10000)")


class _Payload:
    """Unpickling it would create a file: the proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path):
    from memdistill.distill.resume import load_state, save_state

    marker, path = tmp_path / "executed", tmp_path / "state.pt"
    torch.save({"version": 1, "fingerprint": {}, "state": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt or not a memdistill state"):
        load_state(path, {})
    assert not marker.exists()
    save_state(path, {"seed": 1}, {"x": torch.ones(2)})  # a real one still loads
    assert torch.equal(load_state(path, {"seed": 1})["x"], torch.ones(2))
