"""memdistill batch: a bad job file refused before any work, sharding, 2-process gloo runs equal
to one process, resume skipping finished jobs, and SIGKILL at random points losing nothing."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from memdistill.apps import jobfile
from memdistill.apps.batch import DATA_FILE, METRICS_FILE, assign, run_batch
from memdistill.apps.cli import main
from memdistill.data import load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.models import mlp

torch.set_num_threads(1)

TINY = """
[defaults]
steps = 3
epochs = 1
per_class = 2
outer_epochs = 1
batch_size = 250
save_every = 1
[evaluate]
test_archs = ["1-layer", "2-layer"]
strategies = ["none", "s2"]
inits = 2
total_epochs = 2
figures = false
"""
MOONS_JOB = """
[[jobs]]
archs = ["2-layer"]
models = 2
restarts = 2
[jobs.evaluate]
figures = true
"""
SHARDED = TINY + MOONS_JOB + """
[[jobs]]
name = "mixed"
archs = ["1-layer", "2-layer"]
momentum = 0.5
[[jobs]]
data = "iris"
archs = ["1-layer"]
models = 1
restarts = 2
batch_restarts = 1
"""
DATA_PARALLEL = "data_parallel = true\n" + TINY + '[[jobs]]\narchs = ["1-layer", "2-layer"]\nrestarts = 2\n'


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_same_results(out_a: Path, out_b: Path, names, *, ignore=()) -> None:
    """Bit-identical distilled data, the same config but the ``ignore`` keys and identical test
    accuracies in every job folder."""
    for name in names:
        a, b = DistilledData.load(out_a / name / DATA_FILE), DistilledData.load(out_b / name / DATA_FILE)
        for field in ("x", "y", "lrs"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
        assert a.history == b.history, name
        assert {k: v for k, v in a.config.items() if k not in ignore} == {
            k: v for k, v in b.config.items() if k not in ignore
        }, name
        metrics_a, metrics_b = (json.loads((out / name / METRICS_FILE).read_text()) for out in (out_a, out_b))
        assert metrics_a["accuracies"] == metrics_b["accuracies"], name


# ---- job files (their parsing: test_jobfile.py) ----


def test_cli_rejects_a_bad_file_before_any_work(tmp_path, capsys):
    job = write(tmp_path / "job.toml", '[[jobs]]\nmethod = "adjiont"\n')
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(job), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert (
        "memdistill batch: error: job.toml: jobs[0].method: expected one of 'autograd', 'replay', 'checkpoint', "
        "'reversible' or 'auto', got 'adjiont'"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "costs, world, shards",
    [
        ([5, 1, 4, 2, 3], 2, [[0, 1, 3], [2, 4]]),
        ([5, 1, 4, 2, 3], 1, [[0, 1, 2, 3, 4]]),
        ([1, 1, 1, 1], 2, [[0, 2], [1, 3]]),
        ([2, 7], 3, [[1], [0], []]),
    ],
)
def test_assign_longest_first_to_the_least_loaded_rank(costs, world, shards):
    assert assign(costs, world) == shards


# ---- one process: outputs, resume, refusal to overwrite ----


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The sharded job file run in this process (the reference of the other tests)."""
    folder = tmp_path_factory.mktemp("single")
    job = write(folder / "job.toml", SHARDED)
    summary = run_batch(job, folder / "out", progress=False)
    return job, folder / "out", summary


def test_single_process_writes_every_job_and_the_summary(single):
    job, out, summary = single
    names = [j.name for j in jobfile.read(job).jobs]
    assert names == ["moons-2-layer-r0", "moons-2-layer-r1", "mixed-r0", "iris-1-layer-r0", "iris-1-layer-r1"]
    for name in names:
        metrics = json.loads((out / name / METRICS_FILE).read_text())
        assert set(metrics["accuracy"]) == {"none", "s2"} and set(metrics["accuracy"]["s2"]) == {
            "1-layer",
            "2-layer",
        }
        cell = metrics["accuracy"]["none"]["2-layer"]
        assert cell["n"] == 2 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
        drawn = ["lrs.png", "accuracy.png", "synthetic.png"] if name.startswith("moons") else []
        assert metrics["figures"] == drawn and sorted(p.name for p in (out / name).glob("*.png")) == sorted(
            drawn
        )
        assert all((out / name / png).read_bytes()[:4] == b"\x89PNG" for png in drawn)
        assert DistilledData.load(out / name / DATA_FILE).config["job"] == name
        assert not (out / name / "state.pt").exists()
    assert summary == json.loads((out / "summary.json").read_text())
    assert (
        list(summary["jobs"]) == names
        and summary["failed"] == {}
        and summary["configs"]["mixed"]["jobs"] == ["mixed-r0"]
    )
    assert summary["configs"]["moons-2-layer"]["accuracy"]["none"]["1-layer"]["n"] == 4
    assert "| moons-2-layer | none |" in (out / "summary.md").read_text()
    assert not list(out.rglob("*.tmp"))


def test_restarts_batched_equal_restarts_run_alone(single, tmp_path):
    job, out, _ = single
    alone = write(
        tmp_path / "job.toml", TINY + MOONS_JOB.replace("restarts = 2", "restarts = 2\nbatch_restarts = 1")
    )
    run_batch(alone, tmp_path / "out", progress=False)
    assert_same_results(out, tmp_path / "out", ["moons-2-layer-r0", "moons-2-layer-r1"], ignore=["batch"])


def test_resume_skips_finished_jobs_and_refuses_to_overwrite(single, monkeypatch):
    job, out, summary = single
    with pytest.raises(ValueError, match="already holds distilled.safetensors, metrics.json; pass --resume"):
        run_batch(job, out, progress=False)
    monkeypatch.setattr("memdistill.apps.batch.Distiller", None)  # a finished batch distils nothing
    resumed = run_batch(job, out, resume=True, progress=False)
    assert resumed["jobs"] == summary["jobs"]
    changed = write(job.parent / "changed.toml", SHARDED.replace("inits = 2", "inits = 3"))
    with pytest.raises(ValueError, match="metrics.json was made with another config than jobs"):
        run_batch(changed, out, resume=True, progress=False)


def test_resume_evaluates_saved_data_and_refuses_data_of_another_config(single, tmp_path, monkeypatch):
    job, out, summary = single
    copy = shutil.copytree(out, tmp_path / "out")
    (copy / "mixed-r0" / METRICS_FILE).unlink()
    changed = write(tmp_path / "changed.toml", SHARDED.replace("momentum = 0.5", "momentum = 0.6"))
    with pytest.raises(
        ValueError, match=r"mixed-r0/distilled.safetensors was made with another config than jobs\[1\]"
    ):
        run_batch(changed, copy, resume=True, progress=False)
    monkeypatch.setattr("memdistill.apps.batch.Distiller", None)  # the saved data are only evaluated
    assert run_batch(job, copy, resume=True, progress=False)["jobs"] == summary["jobs"]


# ---- image data ----

IMAGE_JOB = """
[[jobs]]
data = "digits-images"
archs = ["lenet"]
steps = 2
epochs = 1
per_class = 1
outer_steps = 3
[jobs.evaluate]
inits = 1
strategies = ["none"]
"""


def test_image_job_writes_its_data_metrics_and_grid(tmp_path):
    start = time.perf_counter()
    summary = run_batch(write(tmp_path / "job.toml", IMAGE_JOB), tmp_path / "out", progress=False)
    seconds = time.perf_counter() - start
    folder = tmp_path / "out" / "digits-images-lenet-r0"
    data = DistilledData.load(folder / DATA_FILE)
    assert data.x.shape == (2, 10, 1, 8, 8) and len(data.history) == 3  # outer_steps, not outer_epochs
    assert data.config["archs"] == ["lenet"] and data.config["outer_steps"] == 3  # images: one model
    assert data.config["data"] == "digits-images" and data.config["class_names"] == [str(c) for c in range(10)]
    assert len(data.config["mean"]) == len(data.config["std"]) == 1  # one channel
    metrics = json.loads((folder / METRICS_FILE).read_text())
    assert list(metrics["accuracies"]) == ["none"] and list(metrics["accuracies"]["none"]) == ["lenet"]  # the archs
    assert len(metrics["accuracies"]["none"]["lenet"]) == 1 and metrics["config"]["evaluate"]["test_archs"] is None
    assert metrics["figures"] == ["lrs.png", "accuracy.png", "grid.png"]
    assert not (folder / "synthetic.png").exists()
    with Image.open(folder / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 0 and grid.height > 0
    assert summary["failed"] == {} and list(summary["jobs"]) == ["digits-images-lenet-r0"]
    assert seconds < 60, seconds


@pytest.mark.parametrize(
    "job, message",
    [
        ('[[jobs]]\narchs = ["lenet"]\n', "job.toml: jobs[0].archs[0]: arch 'lenet' cannot be built for in_shape [2]"),
        (
            '[[jobs]]\nname = "x"\narchs = ["torch.nn:Identity"]\n',
            "job.toml: jobs[0].archs[0]: arch 'torch.nn:Identity' on inputs of shape [2] produced [1, 2]",
        ),
        (
            '[[jobs]]\n[jobs.evaluate]\ntest_archs = ["2-layer", "convnet"]\n',
            "job.toml: jobs[0].evaluate.test_archs[1]: arch 'convnet' cannot be built",
        ),
        pytest.param(
            '[[jobs]]\ndevice = "cuda"\n',
            "job.toml: jobs[0].device: 'cuda', but torch sees no CUDA device here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there"),
        ),
    ],
)
def test_archs_that_do_not_fit_the_data_are_refused_before_any_work(tmp_path, job, message):
    with pytest.raises(ValueError) as error:
        run_batch(write(tmp_path / "job.toml", job), tmp_path / "out", progress=False)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "out").exists()


# ---- two gloo processes ----


def _two_rank_worker(rank: int, folder: Path) -> None:
    """Rank ``rank`` of 2: the sharded batch, the data-parallel batch, a data-parallel Distiller."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=2)
    try:
        run_batch(folder / "sharded.toml", folder / "sharded", progress=False)
        run_batch(folder / "parallel.toml", folder / "parallel", progress=False)
        moons = load_dataset("moons")
        data = Distiller(
            [mlp("1-layer"), mlp("2-layer")], steps=3, epochs=1, progress=False, data_parallel=True
        )
        data = data.fit(moons.x_train, moons.y_train, outer_epochs=1, batch_size=250)
        data.save(folder / f"distiller-rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_ranks")
    write(folder / "sharded.toml", SHARDED)
    write(folder / "parallel.toml", DATA_PARALLEL)
    mp.spawn(_two_rank_worker, args=(folder,), nprocs=2, join=True)
    return folder


def test_two_ranks_shard_jobs_with_the_results_of_one_process(single, two_ranks):
    job, out, summary = single
    names = [j.name for j in jobfile.read(job).jobs]
    assert_same_results(out, two_ranks / "sharded", names)
    two = json.loads((two_ranks / "sharded" / "summary.json").read_text())
    assert two["world_size"] == 2 and list(two["jobs"]) == names
    assert two["configs"] == summary["configs"]


def test_data_parallel_batch_and_distiller_equal_one_process(two_ranks, tmp_path):
    run_batch(write(tmp_path / "parallel.toml", DATA_PARALLEL), tmp_path / "out", progress=False)
    assert_same_results(
        tmp_path / "out", two_ranks / "parallel", ["moons-1-layer+2-layer-r0", "moons-1-layer+2-layer-r1"]
    )
    moons = load_dataset("moons")
    alone = Distiller([mlp("1-layer"), mlp("2-layer")], steps=3, epochs=1, progress=False)
    alone = alone.fit(moons.x_train, moons.y_train, outer_epochs=1, batch_size=250)
    for rank in range(2):
        data = DistilledData.load(two_ranks / f"distiller-rank{rank}.safetensors")
        assert all(torch.equal(getattr(data, f), getattr(alone, f)) for f in ("x", "y", "lrs"))
        assert data.history == alone.history


# ---- SIGKILL at random points, then resume ----

KILLED = (
    TINY.replace("outer_epochs = 1", "outer_epochs = 2").replace("batch_size = 250", "batch_size = 100") + """
[[jobs]]
steps = 10
epochs = 2
models = 2
restarts = 2
[[jobs]]
name = "mixed"
archs = ["1-layer", "2-layer", "4-layer"]
steps = 10
epochs = 2
momentum = 0.9
method = "reversible"
[[jobs]]
name = "single"
steps = 6
epochs = 2
models = 1
restarts = 2
batch_restarts = 1
"""
)


def _checkpoints(out: Path) -> set:
    """The Distiller checkpoints under ``out``: (path, modification time)."""
    marks = set()
    for path in out.glob("*/state.pt"):
        try:
            marks.add((str(path), path.stat().st_mtime_ns))
        except FileNotFoundError:  # removed between glob and stat: its run's data are saved
            pass
    return marks


def _batch_process(job: Path, out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "memdistill",
        "batch",
        str(job),
        "--out",
        str(out),
        "--resume",
        "--threads",
        "1",
        "--no-progress",
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_new_checkpoint(out: Path, seen: set, process: subprocess.Popen) -> set:
    """Poll until a checkpoint under ``out`` is written anew (a mark not in ``seen``) or the
    process has exited; return the marks then."""
    while process.poll() is None:
        marks = _checkpoints(out)
        if not marks <= seen:
            return marks
        time.sleep(0.002)
    return _checkpoints(out)


def _stop(process: subprocess.Popen) -> bool:
    """SIGSTOP the process and wait until it has stopped (True) or exited on its own (False)."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)   # returns once it is stopped, or has exited
    if os.WIFSTOPPED(status):
        return True
    process.returncode = os.waitstatus_to_exitcode(status)
    return False


def kill_and_resume(job: Path, out: Path, kills: int, seed: int) -> tuple[int, int]:
    """Start the batch and SIGKILL it right after its j-th new checkpoint write (j drawn from
    1–3 by ``seed``), ``kills`` times or until a run finishes on its own; then let it finish.
    The moment is found by polling the checkpoint files and the process is frozen (SIGSTOP)
    before it is killed, so no sleep decides the outcome. Returns how many kills landed on a
    running batch, and how many of those left a checkpoint to resume from (seen while frozen)."""
    rng, landed, with_checkpoint = random.Random(seed), 0, 0
    for _ in range(kills):
        process, seen = _batch_process(job, out), _checkpoints(out)
        for _ in range(rng.randint(1, 3)):
            seen = _wait_for_new_checkpoint(out, seen, process)
        if not _stop(process):
            break  # it finished first: nothing left to interrupt
        landed += 1
        with_checkpoint += bool(_checkpoints(out))
        process.kill()
        process.wait()
    final = _batch_process(job, out)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()
    return landed, with_checkpoint


@pytest.mark.parametrize("kills, outer_epochs", [(3, 2), pytest.param(12, 8, marks=pytest.mark.slow)])
def test_sigkill_at_random_points_then_resume_loses_nothing(tmp_path, kills, outer_epochs):
    job = write(tmp_path / "job.toml", KILLED.replace("outer_epochs = 2", f"outer_epochs = {outer_epochs}"))
    names = [j.name for j in jobfile.read(job).jobs]
    run_batch(job, tmp_path / "reference", progress=False)
    landed, with_checkpoint = kill_and_resume(job, tmp_path / "killed", kills, seed=kills)
    assert landed >= 1 and with_checkpoint >= 1
    assert_same_results(tmp_path / "reference", tmp_path / "killed", names)
    assert not list((tmp_path / "killed").rglob("*.tmp")) and not list(
        (tmp_path / "killed").rglob("state.pt")
    )
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert list(summary["jobs"]) == names and summary["failed"] == {}
