"""Faults during long work: SIGINT/SIGTERM save the outer loop's state before exiting and --resume
finishes with the bits of an uninterrupted run; a diverging run keeps its last finite and best
states and resumes with a lower outer_lr; signals are deferred to a safe point."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DiskFull

from memdistill.apps import jobfile
from memdistill.apps.batch import CHECKPOINT_FILE, DATA_FILE, KEPT_FILES, run_batch
from memdistill.apps.cli import main
from memdistill.data import load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.outer import DivergedError
from memdistill.distill.resume import deferred_signals
from memdistill.models import mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
DISTILL = ["distill", "--data", "moons", "--arch", "2-layer", "--models", "1", "--steps", "5", "--epochs", "2",
           "--per-class", "2", "--outer-steps", "150", "--batch-size", "64", "--save-every", "1", "--inits", "0",
           "--no-progress"]
# 4-layer MLPs whose Adam steps (outer_lr 3) blow the learned rates up: outer step 2 is not finite.
DIVERGING = dict(steps=5, epochs=4, per_class=2, init_lr=1.0, progress=False)
DIVERGING_CLI = ["distill", "--data", "moons", "--arch", "4-layer", "--models", "1", "--steps", "5", "--epochs", "4",
                 "--per-class", "2", "--init-lr", "1", "--outer-epochs", "1", "--batch-size", "50", "--inits", "0",
                 "--no-progress"]


def same_bits(a: DistilledData, b: DistilledData) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x", "y", "lrs")) and a.history == b.history


def start(argv: list[str]) -> subprocess.Popen:
    """``python -m memdistill *argv`` on one thread (the tests' own), stderr piped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "memdistill", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def interrupt_when(process: subprocess.Popen, ready, signum: int) -> tuple[int, str]:
    """Send ``signum`` once ``ready()`` (a file shows the work is under way; no fixed sleep);
    returns the exit status and stderr."""
    while not ready():
        assert process.poll() is None, f"exited before it was interrupted: {process.stderr.read()}"
        time.sleep(0.005)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    return process.returncode, err


# ---- distill ----


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    main([*DISTILL, "--out", str(out)])
    return DistilledData.load(out / "distilled.safetensors")


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_distill_saves_the_state_and_resume_gives_the_same_bits(tmp_path, reference, signum):
    state = tmp_path / CHECKPOINT_FILE
    code, err = interrupt_when(start([*DISTILL, "--out", str(tmp_path)]), state.exists, signum)
    assert code == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"memdistill distill: interrupted by {name} after outer step" in err and "Traceback" not in err
    assert f"the state is saved in {state}; continue with: memdistill distill" in err and "--resume" in err
    assert state.exists() and not (tmp_path / "distilled.safetensors").exists()
    done = torch.load(state, weights_only=True)["state"]["done"]
    assert 1 <= done < 150, done  # stopped between two outer steps, before the end
    resumed = start([*DISTILL, "--out", str(tmp_path), "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert same_bits(DistilledData.load(tmp_path / "distilled.safetensors"), reference)
    assert not state.exists() and not list(tmp_path.glob(".*.tmp"))


def test_an_existing_state_needs_resume(tmp_path, capsys):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"a state")
    with pytest.raises(SystemExit) as exit_:
        main([*DISTILL, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"{tmp_path / CHECKPOINT_FILE} holds the state of an unfinished run: pass --resume" in capsys.readouterr().err
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == b"a state"


# ---- batch ----

JOB = """
[defaults]
steps = 5
epochs = 2
per_class = 2
outer_steps = 120
batch_size = 64
save_every = 1
[evaluate]
test_archs = ["1-layer"]
strategies = ["none"]
inits = 1
total_epochs = 2
figures = false
[[jobs]]
archs = ["2-layer"]
models = 1
restarts = 2
"""


def test_sigterm_during_batch_saves_the_state_and_resume_gives_the_same_bits(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    run_batch(job, tmp_path / "reference", progress=False)
    out = tmp_path / "out"
    argv = ["batch", str(job), "--out", str(out), "--threads", "1", "--no-progress"]
    state = out / "moons-2-layer-r0" / CHECKPOINT_FILE
    code, err = interrupt_when(start(argv), state.exists, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert "memdistill batch: interrupted by SIGTERM after outer step" in err and "Traceback" not in err
    assert f"continue with: memdistill batch {job} --out {out}" in err and "--resume" in err
    assert state.exists() and not (out / "moons-2-layer-r0" / DATA_FILE).exists()
    resumed = start([*argv, "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    for name in [j.name for j in jobfile.read(job).jobs]:
        assert same_bits(DistilledData.load(out / name / DATA_FILE),
                         DistilledData.load(tmp_path / "reference" / name / DATA_FILE))
    assert not list(out.rglob(CHECKPOINT_FILE)) and not list(out.rglob("*.tmp"))


# ---- signals are deferred to a safe point ----


def test_deferred_signals_record_the_first_and_raise_on_the_second(capsys):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with deferred_signals() as received:
        assert received() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
        assert received() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert "SIGTERM: saving the state after this outer step" in capsys.readouterr().err
    with deferred_signals(enabled=False) as received:
        assert received() is None and signal.getsignal(signal.SIGINT) == before[1]


def test_fit_saves_the_state_at_the_next_safe_point(tmp_path, monkeypatch):
    state = tmp_path / "state.pt"
    original = Distiller._outer_step
    calls = []

    def signalled(self, *args):  # SIGINT arrives in the middle of outer step 3
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(Distiller, "_outer_step", signalled)
    distiller = Distiller([mlp("2-layer")], steps=3, epochs=1, per_class=2, progress=False)
    with pytest.raises(KeyboardInterrupt) as error:
        distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=2, batch_size=100, checkpoint=state)
    assert error.value.step == 4 and error.value.checkpoint == state and error.value.signum == signal.SIGINT
    copy = pickle.loads(pickle.dumps(error.value))
    assert (copy.signum, copy.step, copy.checkpoint, str(copy)) == (signal.SIGINT, 4, state, str(error.value))
    monkeypatch.undo()
    assert torch.load(state, weights_only=True)["state"]["done"] == 4
    full = Distiller([mlp("2-layer")], steps=3, epochs=1, per_class=2, progress=False)
    full = full.fit(MOONS.x_train, MOONS.y_train, outer_epochs=2, batch_size=100)
    resumed = Distiller([mlp("2-layer")], steps=3, epochs=1, per_class=2, progress=False)
    resumed = resumed.fit(MOONS.x_train, MOONS.y_train, outer_epochs=2, batch_size=100, checkpoint=state, resume=True)
    assert same_bits(resumed, full)


def _signalled_rank(rank: int, folder: Path) -> None:
    """Rank ``rank`` of a data-parallel fit in which rank 1 alone gets SIGTERM in outer step 2."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=2)
    original, calls = Distiller._outer_step, []

    def step(self, *args):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    Distiller._outer_step = step
    try:
        distiller = Distiller([mlp("1-layer"), mlp("2-layer")], steps=3, epochs=1, progress=False, data_parallel=True)
        distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=3, batch_size=100, checkpoint=folder / "state.pt")
        (folder / f"rank{rank}").write_text("finished")
    except KeyboardInterrupt as error:
        (folder / f"rank{rank}").write_text(f"{type(error).__name__} {error.step}")
    finally:
        dist.destroy_process_group()


def test_under_data_parallel_every_rank_stops_at_the_same_step(tmp_path):
    context = mp.spawn(_signalled_rank, args=(tmp_path,), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):  # a rank left alone in a collective would hang here
        assert time.monotonic() < deadline, "the ranks did not stop"
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["Interrupted 3"] * 2
    assert torch.load(tmp_path / "state.pt", weights_only=True)["state"]["done"] == 3


# ---- divergence loses nothing ----


def diverging_fit(checkpoint=None, resume=False, **options):
    distiller = Distiller([mlp("4-layer")], **{**DIVERGING, "outer_lr": 3.0, **options})
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_epochs=1, batch_size=50, checkpoint=checkpoint,
                         resume=resume)


def test_a_diverged_fit_keeps_the_last_finite_and_the_best_state_and_resumes_with_a_lower_rate(tmp_path):
    state = tmp_path / "state.pt"
    with pytest.raises(DivergedError) as caught:
        diverging_fit(state)
    error = caught.value
    assert isinstance(error, FloatingPointError) and error.step == 2 and error.checkpoint == state
    assert "Distiller: at outer step 2 " in str(error) and "Lower init_lr (now 1.0)" in str(error)
    (last,), (best,) = error.last, error.best
    # the last finite state is the one before the Adam step that led to the divergence
    assert last.config["diverged"] and last.config["kept"] == "last-finite" and last.config["outer_step"] == 1
    assert len(last.history) == 1 and bool(torch.isfinite(last.x).all())
    assert best.config["kept"] == "best" and best.config["outer_loss"] == min(best.history)
    assert best.history[best.config["outer_step"]] == best.config["outer_loss"]
    saved = torch.load(state, weights_only=True)["state"]
    assert saved["diverged"] == 1 and saved["done"] == 1 and torch.equal(saved["x_syn"][0], last.x)
    with pytest.raises(DivergedError) as again:  # the same settings diverge again, at the same step
        diverging_fit(state, resume=True)
    assert again.value.step == 2 and same_bits(again.value.last[0], last)
    with pytest.raises(ValueError, match=r"belongs to a different run \(init_lr"):  # only outer_lr may change
        diverging_fit(state, resume=True, outer_lr=0.01, init_lr=0.5)
    resumed = diverging_fit(state, resume=True, outer_lr=0.01)
    assert len(resumed.history) == 20 and resumed.history[:1] == last.history
    assert resumed.history[:2] == best.history[:2]  # the step after the last finite state, taken again
    assert resumed.config["outer_lr"] == 0.01


def test_divergence_without_a_checkpoint_still_returns_the_states():
    with pytest.raises(DivergedError) as caught:
        diverging_fit()
    assert caught.value.checkpoint is None and len(caught.value.last) == len(caught.value.best) == 1
    assert "saved in" not in str(caught.value)
    copy = pickle.loads(pickle.dumps(caught.value))  # crosses process pools (reproduce --jobs)
    assert copy.step == 2 and same_bits(copy.last[0], caught.value.last[0]) and str(copy) == str(caught.value)


def test_distill_writes_the_kept_states_of_a_diverged_run_and_resumes_with_a_lower_rate(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*DIVERGING_CLI, "--outer-lr", "3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert "memdistill distill: error: distillation diverged at outer step 2" in err
    assert "rerun with a lower --outer-lr (now 3.0) and --resume" in err
    kept = {kind: DistilledData.load(tmp_path / name) for kind, name in KEPT_FILES.items()}
    assert all(data.config["diverged"] and data.config["data"] == "moons" for data in kept.values())
    assert kept["last-finite"].config["outer_step"] == 1 and (tmp_path / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "distilled.safetensors").exists()  # nothing a later command takes for a result
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path)])
    assert exit_.value.code == 2 and f"that run diverged; it kept {tmp_path / KEPT_FILES['last-finite']}" in \
        capsys.readouterr().err
    main([*DIVERGING_CLI, "--outer-lr", "0.01", "--resume", "--out", str(tmp_path)])
    data = DistilledData.load(tmp_path / "distilled.safetensors")
    assert len(data.history) == 20 and data.history[:1] == kept["last-finite"].history
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_a_diverged_batch_job_keeps_its_states_and_resumes_with_a_lower_rate(tmp_path):
    job = tmp_path / "job.toml"
    text = ('[[jobs]]\narchs = ["4-layer"]\nmodels = 1\nsteps = 5\nepochs = 4\nper_class = 2\ninit_lr = 1.0\n'
            'outer_lr = {}\nouter_epochs = 1\nbatch_size = 50\n[jobs.evaluate]\ninits = 1\nstrategies = ["none"]\n'
            'test_archs = ["1-layer"]\ntotal_epochs = 2\nfigures = false\n')
    job.write_text(text.format(3.0))
    summary = run_batch(job, tmp_path / "out", progress=False)
    folder = tmp_path / "out" / "moons-4-layer-r0"
    assert "diverged at outer step 2" in summary["failed"]["moons-4-layer-r0"]
    assert all((folder / name).exists() for name in KEPT_FILES.values()) and (folder / CHECKPOINT_FILE).exists()
    job.write_text(text.format(0.01))
    summary = run_batch(job, tmp_path / "out", resume=True, progress=False)
    assert summary["failed"] == {} and len(DistilledData.load(folder / DATA_FILE).history) == 20


def test_a_write_that_fails_halfway_leaves_the_previous_result_and_resume_writes_it(tmp_path, capsys, monkeypatch):
    import memdistill.atomic as atomic

    main([*DISTILL, "--outer-steps", "6", "--seed", "1", "--out", str(tmp_path)])  # the previous result
    previous = (tmp_path / DATA_FILE).read_bytes()
    failing, mkstemp, fdopen = set(), atomic.tempfile.mkstemp, atomic.os.fdopen

    def tracked(*args, **kwargs):
        handle, name = mkstemp(*args, **kwargs)
        if Path(name).name.startswith(f".{DATA_FILE}."):
            failing.add(handle)
        return handle, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", tracked)
    monkeypatch.setattr(atomic.os, "fdopen", lambda h, *a: DiskFull(fdopen(h, *a)) if h in failing else fdopen(h, *a))
    with pytest.raises(SystemExit) as exit_:
        main([*DISTILL, "--outer-steps", "6", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and failing and "Traceback" not in err
    assert (f"could not write {tmp_path / DATA_FILE} (No space left on device); the previous {DATA_FILE} "
            "is unchanged") in err
    assert f"{tmp_path / CHECKPOINT_FILE}: rerun with --resume to write the result" in err
    assert (tmp_path / DATA_FILE).read_bytes() == previous and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    main([*DISTILL, "--outer-steps", "6", "--resume", "--out", str(tmp_path)])
    main([*DISTILL, "--outer-steps", "6", "--out", str(tmp_path / "alone")])
    assert same_bits(DistilledData.load(tmp_path / DATA_FILE), DistilledData.load(tmp_path / "alone" / DATA_FILE))
    assert (tmp_path / DATA_FILE).read_bytes() != previous
