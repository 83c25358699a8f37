"""The memory-versus-n profiler: real fresh-process measurements, skip logic, CSV and plot."""
from __future__ import annotations

import csv

from memdistill.apps import profiling


def test_profile_measures_then_skips_what_would_not_fit(monkeypatch, tmp_path):
    calls = []

    def fake_fresh(method, n, **kw):  # the fresh process itself is exercised by the next test
        calls.append(n)
        row = profiling.measure(method, n, **kw)
        return {**row, "peak_bytes": 4000}   # ru_maxrss barely moves for so small a run

    monkeypatch.setattr(profiling, "measure_in_fresh_process", fake_fresh)
    monkeypatch.setattr(profiling, "available_memory", lambda: 1000)  # bytes: nothing large fits
    seen = []
    rows = profiling.profile([80, 40], ["replay"], width=8, depth=1, budget=0.5, on_row=seen.append)
    assert calls == [40] and [r["n"] for r in rows] == [40, 80] and seen == rows
    assert rows[0]["skipped"] == "" and rows[0]["peak_stored_bytes"] == 40 * 2 * 33 * 4
    assert rows[0]["predicted_peak_bytes"] == rows[0]["peak_stored_bytes"] and rows[0]["plan"] == "replay/store-all"
    assert rows[1]["skipped"].startswith("needs ~0.0 GiB (extrapolated from n=40)")
    table = profiling.format_table(rows)
    assert "| replay | 40 | < 1 (below RSS resolution) | – | 0.01 | 0.01 |" in table   # 4,000 bytes of RSS
    path = profiling.write_csv(rows, tmp_path / "profile.csv")
    assert [r["n"] for r in csv.DictReader(path.open())] == ["40", "80"]


def test_fresh_process_measurement_and_plot(tmp_path):
    rows = [profiling.measure_in_fresh_process(m, 40, width=8, depth=2) for m in ("autograd", "checkpoint")]
    assert rows[0]["peak_stored_bytes"] > rows[1]["peak_stored_bytes"] > 0
    # the child process ran the plan it was given: what it stored is what was predicted (checkpoint)
    assert rows[1]["plan"] == "checkpoint/periodic" and rows[1]["peak_stored_bytes"] == rows[1]["predicted_peak_bytes"]
    assert rows[0]["plan"] == "autograd/autograd" and all(r["seconds"] > 0 for r in rows)
    png = profiling.plot_profile(rows, tmp_path / "profile.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_command_writes_csv_png_and_table(tmp_path, capsys):
    from memdistill.apps.cli import main

    assert main(["profile", "--n", "40", "--methods", "checkpoint,reversible", "--width", "8", "--depth", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| checkpoint | 40 |" in out and "| reversible | 40 |" in out
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "profile.csv").read_text().splitlines()) == 3


def test_profile_command_rejects_bad_arguments(tmp_path):
    import pytest

    from memdistill.apps.cli import main

    with pytest.raises(SystemExit):
        main(["profile", "--n", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["profile", "--methods", "adjoint", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["profile", "--momentum", "0", "--methods", "reversible", "--out", str(tmp_path)])


def test_profile_command_on_lenet_and_digits_images(tmp_path, capsys):
    from memdistill.apps.cli import main

    assert main(["profile", "--arch", "lenet", "--data", "digits-images", "--n", "2,4", "--methods", "checkpoint",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lenet on digits-images 1x8x8, 10 classes, b = 10" in out and "| checkpoint | 4 |" in out
    rows = list(csv.DictReader((tmp_path / "profile.csv").open()))
    assert list(rows[0])[:11] == profiling.FIELDS[:11]      # the original columns first, unchanged
    assert [r["n"] for r in rows] == ["2", "4"] and {r["arch"] for r in rows} == {"lenet"}
    assert {(r["in_shape"], r["classes"], r["batch"], r["data"], r["width"]) for r in rows} == \
        {("1x8x8", "10", "10", "digits-images", "")}
    assert 0 < int(rows[0]["peak_stored_bytes"]) < int(rows[1]["peak_stored_bytes"])
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


def test_in_shape_gives_random_inputs_passed_by_value(monkeypatch, tmp_path):
    import pickle

    from memdistill.apps.cli import main

    problem = profiling.make_problem("convnet[depth=1,width=4]", in_shape="3,8,8", classes=3)
    assert (problem.in_shape, problem.classes, problem.batch, problem.data) == ((3, 8, 8), 3, 3, "random")
    assert pickle.loads(pickle.dumps(problem)) == problem        # names and shapes only
    model, x_syn, y_syn, lrs, x, y = problem.build(steps=2, epochs=3)
    assert x_syn.shape == (2, 3, 3, 8, 8) and y_syn.tolist() == [[0, 1, 2]] * 2 and lrs.shape == (6,)
    assert x.shape == (64, 3, 8, 8) and model(x).shape == (64, 3)

    monkeypatch.setattr(profiling, "measure_in_fresh_process", lambda method, n, **kw: profiling.measure(method, n, **kw))
    assert main(["profile", "--arch", "convnet[depth=1,width=4]", "--in-shape", "3,8,8", "--per-class", "2",
                 "--real-batch", "8", "--n", "3", "--methods", "autograd,reversible", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "profile.csv").open()))
    assert [(r["method"], r["arch"], r["in_shape"], r["classes"], r["batch"], r["real_batch"], r["data"])
            for r in rows] == [(m, "convnet[depth=1,width=4]", "3x8x8", "10", "20", "8", "random")
                               for m in ("autograd", "reversible")]


def test_default_problem_is_the_mlp_also_on_data():
    assert profiling.make_problem() == profiling.Problem() and profiling.Problem().arch is None
    assert profiling.make_problem(width=8, depth=1).columns() == {
        "width": 8, "depth": 1, "arch": "mlp[8]", "in_shape": "2", "classes": 2, "batch": 8, "real_batch": 64,
        "data": "random"}
    moons = profiling.make_problem(data="moons", width=8, depth=2, per_class=3, real_batch=16)
    assert (moons.arch, moons.width, moons.in_shape, moons.batch, moons.data) == ("mlp[8,8]", 8, (2,), 6, "moons")
    x_syn, y_syn, x, y = moons.samples
    assert x_syn.shape == (40, 6, 2) and y_syn[0].tolist() == [0, 0, 0, 1, 1, 1] and x.shape == (16, 2)
    model, *_ = moons.build(steps=1, epochs=1)
    assert [m.out_features for m in model if hasattr(m, "out_features")] == [8, 8, 1]
    row = profiling.measure("replay", 4, problem=moons)        # binary labels of the data: one logit
    assert row["forward_steps"] == 4 and row["arch"] == "mlp[8,8]" and row["data"] == "moons"


def test_profile_rejects_bad_problem_options_naming_them(tmp_path, capsys):
    import pytest

    from memdistill.apps.cli import main

    out = tmp_path / "out"
    cases = [
        (["--arch", "resnet"], "--arch 'resnet'"),
        (["--arch", "lenet", "--data", "moons"], "--arch 'lenet'"),
        (["--arch", "convnet", "--in-shape", "3,4,4"], "--arch 'convnet'"),
        (["--in-shape", "3,x,32"], "--in-shape"),
        (["--in-shape", "0,8,8"], "--in-shape"),
        (["--data", "digits-images", "--in-shape", "1,8,8"], "--data and --in-shape"),
        (["--arch", "lenet", "--width", "8"], "--width"),
        (["--classes", "3"], "--classes"),
        (["--in-shape", "2", "--classes", "1"], "--classes"),
        (["--per-class", "0"], "--per-class"),
        (["--real-batch", "0"], "--real-batch"),
        (["--data-root", str(tmp_path)], "--data-root"),
        (["--data", "no-such-set"], "no-such-set"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["profile", *argv, "--n", "2", "--out", str(out)])
        assert exit_.value.code == 2, argv
        assert needle in capsys.readouterr().err, argv
    assert not out.exists()     # all checked before anything is measured or written


def test_predicted_beside_measured_and_readings_below_resolution(tmp_path):
    rows = [{"method": m, "n": n, "width": 8, "depth": 1, "momentum": 0.9, "skipped": "", "seconds": 0.1,
             "peak_bytes": rss, "peak_stored_bytes": stored, "predicted_peak_bytes": stored, "plan": m}
            for m, n, rss, stored in [("replay", 100, 30 * 2**20, 25 * 2**20), ("reversible", 100, 0, 5000),
                                      ("reversible", 1000, 3 * 2**20, 9000)]]
    table = profiling.format_table(rows)
    assert "| replay | 100 | 30.0 | – | 25.00 | 25.00 |" in table
    assert "| reversible | 100 | < 1 (below RSS resolution) | – | 0.00 | 0.00 |" in table
    assert "| reversible | 1000 | 3.0 |" in table
    assert profiling.plot_profile(rows, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_plan_prints_without_measuring(monkeypatch, capsys):
    from memdistill.apps.cli import main

    def never(*args, **kwargs):
        raise AssertionError("--plan must not measure")

    monkeypatch.setattr(profiling, "measure_in_fresh_process", never)
    assert main(["profile", "--plan", "--n", "40", "--methods", "checkpoint,reversible", "--width", "8",
                 "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "| checkpoint | 40 | checkpoint/periodic | " in out and "| reversible | 40 | reversible/reversible | " in out
