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
    assert rows[1]["skipped"].startswith("needs ~0.0 GiB (extrapolated from n=40)")
    table = profiling.format_table(rows)
    assert "| replay | 40 |" in table
    path = profiling.write_csv(rows, tmp_path / "profile.csv")
    assert [r["n"] for r in csv.DictReader(path.open())] == ["40", "80"]


def test_fresh_process_measurement_and_plot(tmp_path):
    rows = [profiling.measure_in_fresh_process(m, 40, width=8, depth=2) for m in ("autograd", "checkpoint")]
    assert rows[0]["peak_stored_bytes"] > rows[1]["peak_stored_bytes"] > 0
    assert all(r["seconds"] > 0 and r["peak_bytes"] >= 0 for r in rows)
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
