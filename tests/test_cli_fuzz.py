"""A fuzz run of the CLI: random bad arguments and corrupted input files across every command.

The invariant: one clean message on stderr (``memdistill COMMAND: error: ...``), exit status 1
or 2, never a traceback (a bug would escape ``main`` as an exception), never a changed or
removed input file. Seeded (``random.Random``), so a failure is reproducible from its case id;
a short subset runs by default, a broad one with ``-m slow``.
"""

import hashlib
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memdistill.apps.cli import main
from memdistill.data import load_dataset
from memdistill.distill.distiller import Distiller
from memdistill.models import mlp

torch.set_num_threads(1)

# Invalid values per kind of option (each is wrong whatever the other options say).
BAD = {
    "count": ["0", "-1", "-4096", "1.5", "2e3", "", "ten", "nan", "0x10", "1,000"],
    "natural": ["-1", "-77", "0.5", "", "none", "inf"],
    "rate": ["0", "-0.1", "-1e9", "nan", "inf", "-inf", "", "fast", "1e400"],
    "momentum": ["1", "1.0", "-0.01", "2", "nan", "inf", "", "0.9.1"],
    "classes": ["1", "0", "-2", "", "two"],
    "n": ["0", "-5", "1,0", "", "a,b", "3.5"],
    "device": ["tpu", "gpu", "cuda:x", "", "cpu:0:1"],
    "method": ["adjoint", "", "Checkpoint", "reversible "],
    "choice": ["", "sometimes", "RANDOM"],
}
OPTIONS = {  # command -> option -> kind of its values
    "distill": {"--steps": "count", "--epochs": "count", "--per-class": "count", "--models": "count",
                "--outer-epochs": "count", "--outer-steps": "count", "--batch-size": "count",
                "--save-every": "count", "--seed": "natural", "--inits": "natural", "--init-lr": "rate",
                "--outer-lr": "rate", "--momentum": "momentum", "--device": "device", "--method": "method",
                "--init": "choice", "--theta0": "choice", "--dtype": "choice"},
    "evaluate": {"--inits": "count", "--total-epochs": "count", "--baseline-inits": "count",
                 "--baseline-epochs": "count", "--seed": "natural", "--device": "device"},
    "reproduce": {"--jobs": "count", "--restarts": "count", "--models": "count", "--total-epochs": "count",
                  "--eval-inits": "count", "--baseline-inits": "count", "--baseline-epochs": "count",
                  "--steps": "count", "--epochs": "count", "--per-class": "count", "--outer-epochs": "count",
                  "--batch-size": "count", "--seed": "natural", "--init-lr": "rate", "--outer-lr": "rate",
                  "--momentum": "momentum", "--method": "method"},
    "profile": {"--n": "n", "--width": "count", "--depth": "count", "--classes": "classes",
                "--per-class": "count", "--real-batch": "count", "--momentum": "momentum", "--device": "device"},
    "batch": {"--threads": "count"},
}
PATHS = {"distill": "--data", "evaluate": "--data-root", "reproduce": "--data", "profile": "--data-root"}
JOB = '[[jobs]]\nsteps = 2\nepochs = 1\nouter_epochs = 1\n[evaluate]\ninits = 1\n'
JOB_KEYS = {"steps": "count", "per_class": "count", "restarts": "count", "outer_lr": "rate", "momentum": "momentum",
            "method": "method", "init": "choice", "seed": "natural"}


def digest(paths) -> dict:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def assert_clean_failure(argv: list[str], inputs: list[Path], capsys, names: str | None = None) -> None:
    """``main(argv)`` exits 1 or 2 with one ``memdistill CMD: error:`` message (naming the file
    ``names``); inputs unchanged."""
    before = digest(inputs)
    with pytest.raises(SystemExit) as exit_:  # a bug escapes main as its own exception: the test fails
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code in (1, 2), (argv, exit_.value.code, err)
    assert f"memdistill {argv[0]}: error: " in err and "Traceback" not in err, (argv, err)
    assert names is None or names in err, (argv, err)
    assert all(path.exists() for path in inputs) and digest(inputs) == before, argv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid inputs the corruptions start from: a distilled set, a distill state, a job file, a CSV."""
    folder = tmp_path_factory.mktemp("fuzz")
    argv = ["distill", "--arch", "1-layer", "--models", "1", "--steps", "2", "--epochs", "1", "--outer-steps", "3",
            "--inits", "0", "--no-progress"]
    main([*argv, "--out", str(folder / "run")])
    moons = load_dataset("moons")  # a genuine state.pt to corrupt
    Distiller([mlp("1-layer")], steps=2, epochs=1, progress=False).fit(
        moons.x_train, moons.y_train, outer_steps=2, batch_size=100, checkpoint=folder / "state.pt")
    torch.manual_seed(0)
    rows = "".join(f"{x:.3f},{y:.3f},{int(x > y)}\n" for x, y in torch.randn(60, 2).tolist())
    return {"folder": folder, "distill": argv, "distilled": (folder / "run" / "distilled.safetensors").read_bytes(),
            "state": (folder / "state.pt").read_bytes(), "csv": "a,b,label\n" + rows}


# ---- random bad arguments ----


def bad_arguments(rng: random.Random, folder: Path) -> list[str]:
    """A command line with 1-3 invalid option values (or a path that does not exist) on valid ones."""
    command = rng.choice(list(OPTIONS))
    argv = {"evaluate": ["evaluate", str(folder / "run")], "batch": ["batch", str(folder / "job.toml")]}.get(
        command, [command])
    picked = rng.sample(sorted(OPTIONS[command]), k=min(rng.randint(1, 3), len(OPTIONS[command])))
    for option in picked:
        argv += [option, rng.choice(BAD[OPTIONS[command][option]])]
    if command in PATHS and rng.random() < 0.3:
        argv += [PATHS[command], str(folder / "".join(rng.choices(string.ascii_letters + " ._-", k=8)))]
    if command != "evaluate":
        argv += ["--out", str(folder / "out")]
    return argv


def run_bad_arguments(seed: int, cases: int, files, capsys) -> None:
    rng, folder = random.Random(seed), files["folder"]
    (folder / "job.toml").write_text(JOB)
    inputs = [folder / "run" / "distilled.safetensors", folder / "job.toml"]
    for _ in range(cases):
        assert_clean_failure(bad_arguments(rng, folder), inputs, capsys)
    assert not (folder / "out").exists()  # nothing was started


def test_random_bad_arguments_fast(files, capsys):
    run_bad_arguments(seed=0, cases=60, files=files, capsys=capsys)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_random_bad_arguments_broad(files, capsys, seed):
    run_bad_arguments(seed=seed, cases=400, files=files, capsys=capsys)


# ---- corrupted files ----


def corrupt_safetensors(rng: random.Random, good: bytes) -> bytes:
    """An invalid safetensors file: truncated, a control byte in its JSON header, a wrong header
    length, garbage or nothing."""
    header = int.from_bytes(good[:8], "little")
    kind = rng.choice(["truncate", "header", "length", "garbage", "empty"])
    if kind == "truncate":
        return good[: rng.randrange(len(good))]
    if kind == "header":
        at = 8 + rng.randrange(header)
        return good[:at] + b"\x00" + good[at + 1:]
    if kind == "length":
        return rng.choice([len(good), 2**63, header + 1, 3]).to_bytes(8, "little") + good[8:]
    if kind == "garbage":
        return rng.randbytes(rng.randrange(1, 400))
    return b""


def corrupt_state(rng: random.Random, good: bytes, folder: Path) -> bytes:
    """An unreadable or foreign state.pt: truncated, garbage, text, or a torch file of another kind."""
    kind = rng.choice(["truncate", "garbage", "text", "foreign"])
    if kind == "truncate":
        return good[: rng.randrange(len(good))]
    if kind == "garbage":
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == "text":
        return b"version = 1\n"
    torch.save(rng.choice([{"version": 1}, [1, 2], {"version": 1, "fingerprint": [], "state": {}}]), folder / "f.pt")
    return (folder / "f.pt").read_bytes()


def corrupt_job(rng: random.Random) -> bytes:
    """An invalid job file: binary garbage, broken TOML, an unknown key or a bad value."""
    kind = rng.choice(["garbage", "toml", "key", "value", "empty"])
    if kind == "garbage":
        return rng.randbytes(rng.randrange(1, 300))
    if kind == "toml":
        return JOB[: rng.randrange(1, len(JOB))].encode() + b" = = ["
    if kind == "key":
        return (JOB + "".join(rng.choices(string.ascii_lowercase, k=7)) + " = 1\n").encode()
    if kind == "value":
        key = rng.choice(sorted(JOB_KEYS))
        value = rng.choice(BAD[JOB_KEYS[key]])
        return JOB.replace("steps = 2\n", f"{key} = {value if rng.random() < 0.5 else repr(value)}\n", 1).encode()
    return b""


def corrupt_csv(rng: random.Random, good: str) -> bytes:
    """A CSV that is not valid data: text or NaN/inf in a number, one class, no rows, garbage."""
    lines = good.splitlines()
    row = rng.randrange(1, len(lines))
    kind = rng.choice(["text", "nonfinite", "one-class", "header-only", "garbage", "ragged"])
    if kind in ("text", "nonfinite"):
        cells = lines[row].split(",")
        cells[rng.randrange(2)] = rng.choice(["abc", "1.2.3", "--"] if kind == "text" else ["nan", "inf", "-inf"])
        lines[row] = ",".join(cells)
    elif kind == "one-class":
        lines = [lines[0]] + [line[: line.rindex(",")] + ",0" for line in lines[1:]]
    elif kind == "header-only":
        lines = lines[:1]
    elif kind == "ragged":
        lines[row] += ",7"
    else:
        return rng.randbytes(rng.randrange(1, 300))
    return ("\n".join(lines) + "\n").encode()


def run_corrupted_files(seed: int, cases: int, files, capsys) -> None:
    rng, folder = random.Random(seed), files["folder"] / f"corrupt{seed}"
    folder.mkdir(exist_ok=True)
    state = folder / "resume" / "state.pt"
    state.parent.mkdir(exist_ok=True)
    (state.parent / "distilled.safetensors").write_bytes(files["distilled"])
    for case in range(cases):
        target = rng.choice(["evaluate", "resume", "batch", "csv"])
        if target == "evaluate":
            path = folder / f"case{case}.safetensors"
            path.write_bytes(corrupt_safetensors(rng, files["distilled"]))
            argv = ["evaluate", str(path), "--inits", "1", "--total-epochs", "1", "--no-progress"]
        elif target == "resume":
            path = state
            path.write_bytes(corrupt_state(rng, files["state"], folder))
            argv = [*files["distill"], "--resume", "--out", str(state.parent)]
        elif target == "batch":
            path = folder / f"case{case}.toml"
            path.write_bytes(corrupt_job(rng))
            argv = ["batch", str(path), "--out", str(folder / "out")]
        else:
            path = folder / f"case{case}.csv"
            path.write_bytes(corrupt_csv(rng, files["csv"]))
            argv = ["distill", "--data", str(path), "--label", "label", "--out", str(folder / "out"),
                    *files["distill"][1:]]
        assert_clean_failure(argv, [path, state.parent / "distilled.safetensors"], capsys, names=path.name)
    assert not (folder / "out").exists() or not list((folder / "out").rglob("*.safetensors"))


def test_corrupted_files_fast(files, capsys):
    run_corrupted_files(seed=0, cases=24, files=files, capsys=capsys)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 5))
def test_corrupted_files_broad(files, capsys, seed):
    run_corrupted_files(seed=seed, cases=150, files=files, capsys=capsys)


def test_console_script_fuzz_cases(files, tmp_path):
    """A few cases through the console entry point: stderr holds one line, stdout nothing."""
    rng = random.Random(7)
    (tmp_path / "bad.safetensors").write_bytes(corrupt_safetensors(rng, files["distilled"]))
    (files["folder"] / "job.toml").write_text(JOB)
    for argv in (bad_arguments(rng, files["folder"]), ["evaluate", str(tmp_path / "bad.safetensors")]):
        before = digest([tmp_path / "bad.safetensors"])
        result = subprocess.run([sys.executable, "-m", "memdistill", *argv], capture_output=True, text=True)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr, (argv, result.stderr)
        assert f"memdistill {argv[0]}: error: " in result.stderr
        assert digest([tmp_path / "bad.safetensors"]) == before
