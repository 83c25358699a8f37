"""The outer learning-rate schedule: its values, the rates Adam takes, resume, bad values."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import interrupted_at_outer_step

from memdistill.data import load_dataset
from memdistill.distill.distiller import Distiller
from memdistill.distill.outer import OuterState, outer_lr_at
from memdistill.models import mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
TINY = dict(steps=3, epochs=2, per_class=2, outer_lr=0.05, progress=False)


def fit(schedule, outer_steps=8, checkpoint=None, resume=False, **options):
    distiller = Distiller([mlp("2-layer")], **TINY, outer_lr_schedule=schedule, **options)
    return distiller.fit(MOONS.x_train, MOONS.y_train, batch_size=250, outer_steps=outer_steps,
                         checkpoint=checkpoint, save_every=1, resume=resume)


def test_schedule_values_at_given_steps():
    assert [outer_lr_at(0.02, "constant", t, 10) for t in (0, 5, 9)] == [0.02, 0.02, 0.02]
    cosine = [outer_lr_at(0.02, "cosine", t, 10) for t in range(11)]
    assert cosine[0] == 0.02 and cosine[5] == pytest.approx(0.01, rel=1e-15) and cosine[10] == pytest.approx(0, abs=1e-18)
    assert cosine[9] == pytest.approx(0.02 * (1 + math.cos(0.9 * math.pi)) / 2, rel=1e-15) and cosine[9] > 0
    assert all(a > b for a, b in zip(cosine, cosine[1:]))


def test_adam_takes_the_scheduled_rate_at_every_outer_step(monkeypatch):
    taken = []
    original = OuterState.advance

    def spy(self, losses, rate):
        original(self, losses, rate)
        taken.append(self.optimiser.param_groups[0]["lr"])

    monkeypatch.setattr(OuterState, "advance", spy)
    for schedule in ("constant", "cosine"):
        taken.clear()
        fit(schedule, outer_steps=6)
        assert taken == [outer_lr_at(0.05, schedule, t, 6) for t in range(6)]


def test_cosine_changes_the_result_and_is_recorded():
    constant, cosine = fit("constant"), fit("cosine")
    assert "outer_lr_schedule" not in constant.config and cosine.config["outer_lr_schedule"] == "cosine"
    assert constant.history[:2] == cosine.history[:2]  # step 0 takes outer_lr in both
    assert not torch.equal(constant.x, cosine.x)


def test_interrupted_cosine_run_resumes_bit_identical(tmp_path):
    full = fit("cosine", outer_steps=10)
    state = tmp_path / "state.pt"
    with interrupted_at_outer_step(6):
        fit("cosine", outer_steps=10, checkpoint=state)
    resumed = fit("cosine", outer_steps=10, checkpoint=state, resume=True)
    assert all(torch.equal(getattr(resumed, k), getattr(full, k)) for k in ("x", "y", "lrs"))
    assert resumed.history == full.history


@pytest.mark.parametrize("bad", ["linear", "Cosine", None, 1])
def test_bad_schedule_is_rejected_naming_the_option(bad):
    with pytest.raises(ValueError, match=r"outer_lr_schedule .*'constant', 'cosine'"):
        Distiller([mlp("2-layer")], outer_lr_schedule=bad)
    with pytest.raises(ValueError, match="unknown schedule"):
        outer_lr_at(0.01, bad, 0, 10)


def test_cli_and_job_files_take_the_schedule(tmp_path, capsys, monkeypatch):
    """distill --outer-lr-schedule cosine reaches the Distiller (recorded in the result); a job
    file's key too; a bad value is a usage error naming the option."""
    from memdistill.apps import batch, jobfile
    from memdistill.apps.cli import main
    from memdistill.distill.distilled import DistilledData

    tiny = ["--steps", "2", "--epochs", "1", "--per-class", "1", "--outer-steps", "2", "--batch-size", "100",
            "--inits", "0", "--no-progress"]
    main(["distill", "--data", "moons", "--outer-lr-schedule", "cosine", "--out", str(tmp_path / "d"), *tiny])
    assert DistilledData.load(tmp_path / "d" / "distilled.safetensors").config["outer_lr_schedule"] == "cosine"
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--outer-lr-schedule", "linear", "--out", str(tmp_path / "e")])
    assert exit_.value.code == 2 and "--outer-lr-schedule" in capsys.readouterr().err
    job = jobfile.parse('[[jobs]]\nouter_lr_schedule = "cosine"\nsteps = 2\nepochs = 1\nper_class = 1\n'
                        'outer_steps = 2\nbatch_size = 100\n', tmp_path / "job.toml")
    made = []
    monkeypatch.setattr(batch, "Distiller", lambda *args, **kwargs: made.append(kwargs) or Distiller(*args, **kwargs))
    batch.distil(batch.runs(job)[0], MOONS, tmp_path / "b", resume=False, data_parallel=False, progress=False)
    assert made[0]["outer_lr_schedule"] == "cosine"
