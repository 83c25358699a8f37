"""The CLI's error boundary: every argument checked before any work and named as typed, one
message on stderr, exit 2 for usage, 1 for the rest, 128 + N for signal N, a traceback only for
a bug (or with --debug); failed writes leave the previous file and say so."""

import errno
import os
import signal
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch
from conftest import DiskFull

import memdistill.atomic as atomic
from memdistill.apps import cli
from memdistill.apps.cli import Terminated, UsageError, _failure, main
from memdistill.atomic import write_bytes_atomic
from memdistill.data import DataNotFoundError
from memdistill.distill.distilled import DistilledData
from memdistill.distill.outer import DivergedError
from memdistill.distill.resume import Interrupted


@pytest.fixture
def distilled(tmp_path):
    """A folder holding a small distilled.safetensors of two moons."""
    data = DistilledData(x=torch.randn(2, 4, 2), y=torch.tensor([[0, 0, 1, 1]] * 2), lrs=torch.full((2,), 0.1),
                         config={"data": "moons", "archs": ["2-layer"]}, history=[0.5])
    data.save(tmp_path / "run" / "distilled.safetensors")
    return tmp_path / "run"


@pytest.fixture
def no_work(monkeypatch):
    """Any data loading, distillation, reproduction, batch or profile makes the test fail."""
    def work(*args, **kwargs):
        raise AssertionError("work started before every argument was checked")
    for name in ("load_dataset", "Distiller", "run_batch"):
        monkeypatch.setattr(cli, name, work)
    monkeypatch.setattr(cli.reproduce, "run", work)
    monkeypatch.setattr(cli.profiling, "make_problem", work)
    monkeypatch.setattr(cli.DistilledData, "load", work)


def fails(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_.value.code, err


BAD_ARGUMENTS = [
    (["reproduce", "--quick", "--steps", "-1"], "argument --steps: expected an integer >= 1, got -1"),
    (["reproduce", "--jobs", "0"], "argument --jobs: expected an integer >= 1, got 0"),
    (["reproduce", "--restarts", "0"], "argument --restarts"),
    (["reproduce", "--eval-inits", "0"], "argument --eval-inits"),
    (["reproduce", "--outer-lr", "0"], "argument --outer-lr: expected a number > 0, got 0"),
    (["reproduce", "--init-lr", "nan"], "argument --init-lr: expected a finite number, got 'nan'"),
    (["reproduce", "--momentum", "1"], "argument --momentum: expected a number in [0, 1), got 1"),
    (["reproduce", "--batch-size", "many"], "argument --batch-size: expected an integer >= 1, got 'many'"),
    (["reproduce", "--seed", "-3"], "argument --seed: expected an integer >= 0, got -3"),
    (["reproduce", "--method", "reversible"], "--method reversible needs --momentum > 0"),
    (["reproduce", "--data", "nowhere.csv"], "--data: unknown data set 'nowhere.csv'"),
    (["reproduce", "--data", "digits-images"], "--data digits-images: reproduce runs the paper's protocol on tables"),
    (["evaluate", "{run}", "--inits", "0"], "argument --inits: expected an integer >= 1, got 0"),
    (["evaluate", "{run}", "--total-epochs", "0"], "argument --total-epochs"),
    (["evaluate", "{run}", "--baseline-inits", "0"], "argument --baseline-inits"),
    (["evaluate", "{run}", "--baseline-epochs", "-2"], "argument --baseline-epochs"),
    (["evaluate", "{run}", "--seed", "-1"], "argument --seed"),
    (["evaluate", "{run}", "--strategy", "none,s9"], "--strategy: unknown strategy 's9'"),
    (["evaluate", "{tmp}/missing"], "no file at"),
    (["evaluate", "{run}", "--test-arch", ",,"], "--test-arch: expected comma-separated architectures, got none"),
    (["evaluate", "{run}", "--data-root", "{tmp}/missing"], "--data-root: no folder at"),
    (["distill", "--steps", "0"], "argument --steps"),
    (["distill", "--epochs", "two"], "argument --epochs: expected an integer >= 1, got 'two'"),
    (["distill", "--per-class", "0"], "argument --per-class"),
    (["distill", "--models", "0"], "argument --models"),
    (["distill", "--inits", "-1"], "argument --inits: expected an integer >= 0, got -1"),
    (["distill", "--save-every", "0"], "argument --save-every"),
    (["distill", "--outer-steps", "0"], "argument --outer-steps"),
    (["distill", "--init-lr", "inf"], "argument --init-lr: expected a finite number"),
    (["distill", "--outer-lr", "-0.1"], "argument --outer-lr: expected a number > 0"),
    (["distill", "--momentum", "-0.5"], "argument --momentum: expected a number in [0, 1)"),
    (["distill", "--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N"),
    (["distill", "--data", "nope"], "--data: unknown data set 'nope'"),
    (["distill", "--data", "{tmp}/set.csv"], "is a CSV file: name its label column with --label"),
    (["distill", "--data", "mnist"], "--data mnist reads its files from a local folder"),
    (["distill", "--arch", "1-layer", "--arch", "2-layer", "--models", "3"], "--models 3 does not match the 2 --arch"),
    (["distill", "--method", "reversible"], "--method reversible needs --momentum > 0"),
    (["distill", "--out", "{tmp}/set.csv"], "--out: {tmp}/set.csv is a file"),
    (["profile", "--n", "0"], "argument --n: expected integers >= 1"),
    (["profile", "--width", "0"], "argument --width"),
    (["profile", "--depth", "0"], "argument --depth"),
    (["profile", "--classes", "1"], "argument --classes: expected an integer >= 2, got 1"),
    (["profile", "--per-class", "0"], "argument --per-class"),
    (["profile", "--real-batch", "0"], "argument --real-batch"),
    (["profile", "--momentum", "1.5"], "argument --momentum"),
    (["profile", "--methods", "checkpoint,adjoint"], "--methods: unknown method(s) ['adjoint']"),
    (["profile", "--methods", ","], "--methods: none given"),
    (["profile", "--methods", "reversible", "--momentum", "0"], "--methods reversible needs --momentum > 0"),
    (["batch", "{tmp}/missing.toml"], "no job file at"),
    (["batch", "{tmp}/job.toml", "--threads", "0"], "argument --threads"),
    (["batch", "{tmp}/bad.toml"], "bad.toml: jobs[0].steps: "),
    (["batch", "{tmp}/bad.toml", "--debug"], "bad.toml: jobs[0].steps: "),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS)
def test_every_argument_is_checked_before_any_work_in_the_words_typed(tmp_path, distilled, no_work, capsys,
                                                                      argv, message):
    (tmp_path / "set.csv").write_text("a,b,kind\n1,2,0\n2,1,1\n")
    (tmp_path / "job.toml").write_text("[[jobs]]\n")
    (tmp_path / "bad.toml").write_text("[[jobs]]\nsteps = -1\n")
    argv = [a.format(run=distilled, tmp=tmp_path) for a in argv]
    if argv[0] in ("distill", "reproduce", "profile", "batch") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if "--debug" in argv:  # --debug shows the traceback of what would be a usage error
        with pytest.raises(UsageError, match=message.replace("[", r"\[")):
            main(argv)
        return
    code, err = fails(argv, capsys)
    assert code == 2 and f"memdistill {argv[0]}: error: " in err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"memdistill {version('memdistill')}\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    argv = ["distill", "--data", "nope", "--out", str(tmp_path)]
    with pytest.raises(UsageError, match="--data: unknown data set 'nope'"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


@pytest.mark.parametrize("bug", [RuntimeError("bug"), TypeError("bug"), KeyError("bug"), ZeroDivisionError()])
def test_a_bug_shows_its_traceback(tmp_path, monkeypatch, bug):
    def command(args):
        raise bug
    monkeypatch.setitem(cli.COMMANDS, "profile", command)
    with pytest.raises(type(bug)):
        main(["profile", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "error, code, text",
    [
        (UsageError("--steps: bad"), 2, "error: --steps: bad"),
        (DataNotFoundError("no mnist files in DIR"), 2, "error: no mnist files in DIR"),
        (ValueError("x.csv: row 3: text"), 1, "error: x.csv: row 3: text"),
        (FileNotFoundError("no file at 'x'"), 1, "error: no file at 'x'"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
        (PermissionError("could not write x"), 1, "error: could not write x"),
        (FloatingPointError("diverged"), 1, "error: diverged"),
        (DivergedError("Distiller: ... Lower init_lr", step=4, reason="the loss is not finite"), 1,
         "error: distillation diverged at outer step 4: the loss is not finite; lower --init-lr or --outer-lr"),
        (OverflowError("left the fixed-point range"), 1, "error: left the fixed-point range"),
        (MemoryError(), 1, "error: MemoryError"),
        (torch.OutOfMemoryError("CUDA out of memory"), 1, "error: CUDA out of memory"),
        (KeyboardInterrupt(), 130, "interrupted by SIGINT"),
        (Terminated(), 143, "interrupted by SIGTERM; continue with: memdistill batch j.toml --out o --resume"),
        (Interrupted(signal.SIGTERM, 7, "o/state.pt"), 143,
         "interrupted by SIGTERM after outer step 7; the state is saved in o/state.pt; continue with: "
         "memdistill batch j.toml --out o --resume"),
    ],
)
def test_what_each_error_exits_with(error, code, text):
    status, message = _failure(error, "batch", ["batch", "j.toml", "--out", "o"])
    assert status == code and text in message


@pytest.mark.parametrize("error", [RuntimeError("bug"), TypeError("bug"), AttributeError("bug"), SystemExit(3)])
def test_anything_else_is_a_bug(error):
    assert _failure(error, "distill", []) is None


def test_only_an_interrupted_distill_says_how_to_resume():
    code, message = _failure(KeyboardInterrupt(), "distill", ["distill", "--out", "o"])
    assert (code, message) == (130, "interrupted by SIGINT")
    code, message = _failure(Interrupted(signal.SIGINT, 3, "o/state.pt"), "distill", ["distill", "--out", "o b"])
    assert message.endswith("continue with: memdistill distill --out 'o b' --resume")


def test_library_errors_end_in_one_message_and_exit_1(tmp_path, distilled, capsys):
    path = distilled / "distilled.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    code, err = fails(["evaluate", str(path)], capsys)
    assert code == 1 and err.startswith(f"memdistill evaluate: error: DistilledData.load: {str(path)!r}")
    assert err.count("\n") == 1


def test_arch_names_are_checked_on_the_data_in_the_words_typed(tmp_path, distilled, capsys):
    code, err = fails(["distill", "--arch", "huge", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "memdistill distill: error: --arch: unknown arch name 'huge'" in err
    code, err = fails(["evaluate", str(distilled), "--test-arch", "2-layer,lenet"], capsys)
    assert code == 2 and "memdistill evaluate: error: --test-arch: arch 'lenet' cannot be built" in err
    assert not (tmp_path / "out").exists()


def test_a_console_script_error_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "distilled.safetensors"
    path.write_bytes(b"not a safetensors file")
    result = subprocess.run([sys.executable, "-m", "memdistill", "evaluate", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("memdistill evaluate: error: ") and result.stderr.count("\n") == 1
    assert path.read_bytes() == b"not a safetensors file"


# ---- failed writes ----


def half_full_disk(monkeypatch):
    """Every atomic write writes half its bytes, then fails: no space left on the device."""
    fdopen = atomic.os.fdopen

    monkeypatch.setattr(atomic.os, "fdopen", lambda handle, *args: DiskFull(fdopen(handle, *args)))


def test_a_write_that_fails_halfway_leaves_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    path.write_bytes(b"previous")
    half_full_disk(monkeypatch)
    with pytest.raises(OSError) as error:
        write_bytes_atomic(path, b"new contents" * 100)
    assert error.value.errno == errno.ENOSPC
    assert str(error.value) == f"could not write {path} (No space left on device); the previous result.json is unchanged"
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["result.json"]
    with pytest.raises(OSError, match="no file was written"):
        write_bytes_atomic(tmp_path / "new.json", b"x")
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_folder_that_cannot_be_written_says_so(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    (tmp_path / "a.txt").write_text("kept")
    with pytest.raises(PermissionError, match=r"could not write .*a.txt \(Permission denied\); the previous a.txt "
                                              "is unchanged"):
        atomic.write_text_atomic(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "kept"
