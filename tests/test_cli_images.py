"""The command line on images: distil digits-images with LeNet, see the grid, evaluate, bad input."""
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from memdistill.apps.cli import main
from memdistill.distill.distilled import DistilledData

torch.set_num_threads(1)
TINY = ["--steps", "2", "--epochs", "1", "--outer-steps", "3", "--batch-size", "64", "--no-progress"]


def test_distill_digits_images_with_lenet_writes_data_grid_and_accuracies(tmp_path, capsys):
    main(["distill", "--data", "digits-images", "--arch", "lenet", "--inits", "2", *TINY, "--out", str(tmp_path)])
    data = DistilledData.load(tmp_path / "distilled.safetensors")
    assert data.x.shape == (2, 10, 1, 8, 8) and data.lrs.shape == (2,)
    assert data.config["init"] == "real" and data.config["archs"] == ["lenet"]
    assert len(data.config["mean"]) == len(data.config["std"]) == 1
    assert data.config["class_names"] == [str(c) for c in range(10)]
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG"
    out = capsys.readouterr().out
    assert "lenet: 2 fresh models trained on the distilled data: test accuracy" in out
    assert "trained on the full training split" in out

    main(["evaluate", str(tmp_path), "--strategy", "none", "--inits", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert "lenet" in out and "1-layer" not in out  # images: the distilled arch by default
    assert (tmp_path / "evaluation.json").is_file()


def test_images_default_to_the_fastest_method_that_fits_with_checkpoints_bits(tmp_path, capsys):
    """Images run method "auto" by default and say what it ran: LeNet's 30 steps fit, so autograd
    (faster than checkpoint); under a 100 KiB budget checkpointing. Every float method computes the
    same hypergradient, so all three results have the same bits."""
    runs, said = {}, {}
    for name, options in (("default", []), ("checkpoint", ["--method", "checkpoint"]), ("budget", ["--memory", "100KiB"])):
        main(["distill", "--data", "digits-images", "--inits", "0", *TINY, *options, "--out", str(tmp_path / name)])
        runs[name] = DistilledData.load(tmp_path / name / "distilled.safetensors")
        said[name] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("method auto ran")]
    assert runs["default"].config["method"] == "auto" and runs["checkpoint"].config["method"] == "checkpoint"
    assert said["default"][0].startswith("method auto ran autograd: autograd's graphs fit in"), said
    assert said["budget"][0].startswith("method auto ran checkpoint: 1 snapshot fits in 0.1 MiB"), said
    assert said["checkpoint"] == []
    for name in ("checkpoint", "budget"):
        for field in ("x", "y", "lrs"):
            assert torch.equal(getattr(runs["default"], field), getattr(runs[name], field)), (name, field)


def test_an_import_string_architecture_and_an_npz_data_set(tmp_path, monkeypatch, capsys):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn

        def make_net(in_shape, classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], classes))

        def not_a_module(in_shape, classes):
            return "a string"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.normal(size=(30, 1, 4, 4)), y=np.arange(30) % 3)
    data_file = str(tmp_path / "tiny.npz")
    main(["distill", "--data", data_file, "--arch", "mynets:make_net", "--inits", "1", *TINY,
          "--out", str(tmp_path / "out")])
    assert DistilledData.load(tmp_path / "out" / "distilled.safetensors").x.shape == (2, 3, 1, 4, 4)
    assert "mynets:make_net: 1 fresh models" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--data", data_file, "--arch", "mynets:not_a_module", *TINY, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "mynets:not_a_module" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "moons", "--arch", "lenet"], "lenet"),
        (["--data", "digits-images", "--arch", "nowhere.module:net"], "cannot import module 'nowhere.module'"),
        (["--data", "digits-images", "--arch", "convnet-4"], "depth"),
        (["--data", "mnist", "--data-root", "/nonexistent"], "--data-root: no folder at '/nonexistent'"),
        (["--data", "mnist", "--data-root", "{tmp}"], "train-images-idx3-ubyte"),
        (["--data", "digits-images", "--models", "0"], "argument --models: expected an integer >= 1, got 0"),
        (["--data", "digits-images", "--inits", "-1"], "argument --inits: expected an integer >= 0, got -1"),
    ],
)
def test_bad_image_input_names_the_argument(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]  # an empty folder
    with pytest.raises(SystemExit) as exit_:
        main(["distill", *argv, *TINY, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_distill_help_shows_the_image_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = capsys.readouterr().out
    assert "images lenet" in out and "digits-images" in out and "--data-root" in out


def test_cuda_device_on_a_machine_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--data", "digits-images", "--device", "cuda", *TINY, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "cuda" in capsys.readouterr().err.lower()




@pytest.mark.slow
def test_the_default_digits_images_run_teaches_fresh_lenets(tmp_path, capsys):
    """The README's image command on its defaults (≈ 2.5 minutes): fresh random-init LeNets trained
    on the 100 distilled images for 30 steps reach the measured level (0.80–0.82, README)."""
    main(["distill", "--data", "digits-images", "--no-progress", "--out", str(tmp_path)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lenet: 10 fresh models"))
    accuracy = float(line.split("test accuracy ")[1].split(" ")[0])
    assert accuracy >= 0.75, line
