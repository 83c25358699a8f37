"""The memdistill command line: help, distill → evaluate, a tiny reproduce, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from memdistill.apps.cli import main
from memdistill.distill.distilled import DistilledData

torch.set_num_threads(1)
ARCHS = ["1-layer", "2-layer", "4-layer"]
STRATEGIES = ["none", "s1", "s2", "s3"]
TINY = ["--steps", "2", "--epochs", "1", "--outer-epochs", "1", "--batch-size", "500", "--no-progress"]


def test_module_entry_point_and_help():
    result = subprocess.run(
        [sys.executable, "-m", "memdistill", "--help"], capture_output=True, text=True, check=True
    )
    assert all(command in result.stdout for command in ("distill", "evaluate", "reproduce"))


@pytest.mark.parametrize("command", ["distill", "evaluate", "reproduce"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: memdistill " + command in capsys.readouterr().out


def test_distill_then_evaluate(tmp_path, capsys):
    main(
        [
            "distill",
            "--data",
            "moons",
            "--arch",
            "1-layer",
            "--arch",
            "2-layer",
            *TINY,
            "--out",
            str(tmp_path),
        ]
    )
    data = DistilledData.load(tmp_path / "distilled.safetensors")
    assert data.x.shape == (2, 8, 2) and data.config["archs"] == ["1-layer", "2-layer"]
    assert data.config["data"] == "moons"
    assert "test accuracy" in capsys.readouterr().out
    main(
        [
            "evaluate",
            str(tmp_path),
            "--test-arch",
            "1-layer,4-layer",
            "--strategy",
            "none,s2",
            "--inits",
            "2",
            "--total-epochs",
            "3",
            "--baseline",
            "--baseline-inits",
            "2",
            "--baseline-epochs",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert "| strategy | 1-layer | 4-layer |" in printed and "full-data baseline" in printed
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(result["table"]) == {"none", "s2"} and set(result["table"]["s2"]) == {"1-layer", "4-layer"}
    assert result["table"]["none"]["1-layer"]["n"] == 2 and set(result["baseline"]) == {"1-layer", "4-layer"}
    for by_arch in result["table"].values():
        for summary in by_arch.values():
            _check_summary(summary, inits=2)


def _check_summary(summary, inits, n_test=500):
    """A summary of ``inits`` accuracies on the n_test test points: its mean is a whole number of
    correct answers over inits · n_test, and one init has no spread."""
    assert summary["n"] == inits
    correct = summary["mean"] * inits * n_test
    assert abs(correct - round(correct)) < 1e-6, summary
    low, high = summary["ci95"]
    assert low <= summary["mean"] <= high
    if inits == 1:
        assert summary["std"] == 0.0 and low == high == summary["mean"]
    if inits == 2:  # std (ddof 1) of a, b is |a − b|/√2: both accuracies are whole counts again
        for accuracy in (summary["mean"] - summary["std"] / 2**0.5, summary["mean"] + summary["std"] / 2**0.5):
            assert abs(accuracy * n_test - round(accuracy * n_test)) < 1e-6, summary


def test_tiny_reproduce_writes_results_report_and_figures(tmp_path):
    main(
        [
            "reproduce",
            "--out",
            str(tmp_path),
            "--jobs",
            "1",
            "--quick",
            "--sweeps",
            "--restarts",
            "1",
            "--eval-inits",
            "1",
            "--baseline-inits",
            "2",
            "--baseline-epochs",
            "5",
            "--total-epochs",
            "2",
            *TINY,
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["baseline"]) == set(ARCHS)
    assert set(results["table1"]) == set(ARCHS)
    for table in [*results["table1"].values(), results["table2"]]:
        assert set(table) == set(STRATEGIES)
        assert all(set(by_arch) == set(ARCHS) for by_arch in table.values())
    for summary in results["baseline"].values():
        _check_summary(summary, inits=2)
    for summary in [*(s for t in results["table1"].values() for a in t.values() for s in a.values()),
                    *(s for a in results["table2"].values() for s in a.values())]:
        _check_summary(summary, inits=1)
    assert set(results["sweeps"]) == {"epochs", "steps", "models"}
    assert (
        results["config"]["steps"] == 2 and results["config"]["outer_lr"] == 0.05 and results["seconds"] > 0
    )
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(
        ["data.png", "boundaries.png", "synthetic.png", "lrs.png", "accuracy.png", "sweeps.png"]
    )
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    report = (tmp_path / "report.md").read_text()
    assert "## Table 1" in report and "## Table 2" in report and "## Full-data baseline" in report
    assert all(f"![{name}]({name})" in report for name in pngs)
    assert len(list((tmp_path / "distilled").glob("*.safetensors"))) == 4
    assert not list(tmp_path.rglob("*.tmp"))


def test_reproduce_results_do_not_depend_on_jobs(tmp_path):
    tiny = [
        "--quick",
        "--restarts",
        "2",
        "--eval-inits",
        "1",
        "--baseline-inits",
        "1",
        "--baseline-epochs",
        "2",
        "--total-epochs",
        "2",
        *TINY,
    ]
    main(["reproduce", "--out", str(tmp_path / "one"), "--jobs", "1", *tiny])
    main(["reproduce", "--out", str(tmp_path / "two"), "--jobs", "2", *tiny])
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert (one["table1"], one["table2"]) == (two["table1"], two["table2"])
    assert two["config"]["jobs"] == 2
    for path in (tmp_path / "one" / "distilled").iterdir():
        assert path.read_bytes() == (tmp_path / "two" / "distilled" / path.name).read_bytes()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["distill", "--data", "mnist"], "--data mnist reads its files from a local folder"),
        (["distill", "--arch", "huge"], "unknown arch name 'huge'"),
        (
            ["distill", "--arch", "1-layer", "--arch", "2-layer", "--models", "3"],
            "--models 3 does not match the 2 --arch values",
        ),
        (["distill", "--per-class", "0"], "argument --per-class: expected an integer >= 1, got 0"),
        (["evaluate", "missing-dir"], "no file at"),
    ],
)
def test_bad_input_exits_with_a_clear_message(tmp_path, capsys, argv, message):
    out = ["--out", str(tmp_path)] if argv[0] == "distill" else []
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *out, *(TINY if argv[0] == "distill" else [])])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_csv_without_the_label_column(tmp_path, capsys):
    path = tmp_path / "set.csv"
    path.write_text("a,b,kind\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    with pytest.raises(SystemExit):
        main(["distill", "--data", str(path), "--label", "class", "--out", str(tmp_path), *TINY])
    assert "label column 'class' not in" in capsys.readouterr().err
    main(["distill", "--data", str(path), "--label", "kind", "--out", str(tmp_path), *TINY])
    assert DistilledData.load(tmp_path / "distilled.safetensors").config["label"] == "kind"


def test_reproduce_uses_the_cores_by_default(monkeypatch):
    from memdistill.apps import cli
    for cores, jobs in [(1, 1), (2, 2), (16, 4), (None, 1)]:
        monkeypatch.setattr(cli.os, "cpu_count", lambda cores=cores: cores)
        assert cli.build_parser().parse_args(["reproduce", "--out", "x"]).jobs == jobs
