"""reproduce: one progress bar that ends at its total, a line per phase, a quick run marked as
one everywhere, and figures that title, label and explain what they show."""

import json

import numpy as np
import pytest
import torch

from memdistill.apps import figures, reproduce
from memdistill.apps.cli import main
from memdistill.apps.report import QUICK_BANNER
from memdistill.data import load_dataset
from memdistill.distill.distilled import DistilledData

torch.set_num_threads(1)
TINY = dict(restarts=1, steps=2, epochs=2, outer_epochs=1, batch_size=500, eval_inits=1, baseline_inits=2,
            baseline_epochs=3, total_epochs=2, sweep_epochs=(1,), sweep_steps=(1,), sweep_models=(1,))


class RecordingBar:
    """Stands in for tqdm in reproduce: records its total, its updates and its postfixes."""

    made: list["RecordingBar"] = []

    def __init__(self, *args, total=None, disable=False, **kwargs):
        self.total, self.n, self.disable, self.postfixes = total, 0, disable, []
        RecordingBar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        assert isinstance(n, int) and n > 0, f"bar update {n!r} is not a positive int"
        self.n += n

    def set_postfix_str(self, text):
        self.postfixes.append(text)

    write = staticmethod(print)

    def refresh(self):
        pass


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A tiny --quick run with sweeps: its results, its folder, the log lines, the bar and the
    title of every figure it saved."""
    out, lines, titles = tmp_path_factory.mktemp("quick"), [], {}
    save_png = figures.save_png
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "tqdm", RecordingBar)
        patch.setattr(figures, "save_png", lambda fig, path: (titles.__setitem__(path.name, fig), save_png(fig, path))[1])
        RecordingBar.made.clear()
        results = reproduce.run(reproduce.Protocol(**TINY), out, sweeps=True, quick=True, log=lines.append)
    return results, out, lines, RecordingBar.made[0], titles


def test_the_bar_ends_at_its_total_and_shows_each_phase(quick_run):
    results, _, _, bar, _ = quick_run
    assert bar.total == sum(reproduce.plan(reproduce.Protocol(**TINY), load_dataset("moons"), True).values())
    assert bar.n == bar.total
    assert bar.postfixes == ["baseline", "distill", "evaluate", "sweeps", "figures"]


def test_a_line_per_phase_with_its_seconds(quick_run):
    results, _, lines, _, _ = quick_run
    assert [line.split(":")[0] for line in lines] == ["baseline", "distill", "evaluate", "sweeps", "figures"]
    assert all(line.endswith(" s") for line in lines)
    assert list(results["phases"]) == ["baseline", "distill", "evaluate", "sweeps", "figures"]
    assert sum(results["phases"].values()) <= results["seconds"]
    assert set(results["figure_seconds"]) == {p.name for p in quick_run[1].glob("*.png")}


def test_a_quick_run_says_so_in_results_report_and_every_figure(quick_run):
    results, out, _, _, saved = quick_run
    assert json.loads((out / "results.json").read_text())["quick"] is True
    report = (out / "report.md").read_text()
    assert report.startswith("# memdistill reproduction (quick run)\n\n" + QUICK_BANNER)
    assert sorted(saved) == sorted(["data.png", "boundaries.png", "synthetic.png", "lrs.png", "accuracy.png",
                                    "sweeps.png"])
    assert all(figures.QUICK_NOTE in fig._suptitle.get_text() for fig in saved.values())


def test_a_full_run_is_not_marked(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: titles.append(fig._suptitle.get_text()))
    results = reproduce.run(reproduce.Protocol(**TINY), tmp_path, progress=False, log=None)
    assert results["quick"] is False and "quick" not in (tmp_path / "report.md").read_text().split("\n")[0]
    assert titles and not any(figures.QUICK_NOTE in title for title in titles)


def test_cli_quick_marks_results_and_says_what_it_wrote(tmp_path, capsys):
    tiny = ["--restarts", "1", "--steps", "2", "--epochs", "1", "--outer-epochs", "1", "--batch-size", "500",
            "--eval-inits", "1", "--baseline-inits", "1", "--baseline-epochs", "2", "--total-epochs", "2"]
    main(["reproduce", "--quick", "--out", str(tmp_path), "--no-progress", "--jobs", "1", *tiny])
    printed = capsys.readouterr().out
    assert "distill: 4 sources × 1 restarts in" in printed  # phase lines stay without the bar
    assert f"wrote {tmp_path / 'results.json'}" in printed and "quick run: not the reproduction" in printed
    assert json.loads((tmp_path / "results.json").read_text())["quick"] is True


def test_memory_budget_reaches_every_distillation(tmp_path, capsys):
    """--memory: the protocol's budget is the engine's: auto then plans within it (stats say so), and
    the protocol's replay over it is refused, naming the budget."""
    dataset = load_dataset("moons")
    archs = reproduce.sources(reproduce.Protocol(), dataset)["2-layer"]
    ran = reproduce.distill(reproduce.Protocol(**TINY, method="auto", memory=4096), dataset, archs, 0, progress=False)
    assert ran.config["memory"] == 4096 and ran.config["method"] == "auto"
    with pytest.raises(ValueError, match=r"method='replay' stores .* over memory=0.0 MiB \(1,024 bytes\)"):
        reproduce.distill(reproduce.Protocol(**TINY, memory=1024), dataset, archs, 0, progress=False)
    tiny = ["--restarts", "1", "--steps", "2", "--epochs", "1", "--outer-epochs", "1", "--batch-size", "500",
            "--eval-inits", "1", "--baseline-inits", "1", "--baseline-epochs", "2", "--total-epochs", "2"]
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--quick", "--out", str(tmp_path), "--no-progress", "--jobs", "1", "--memory", "1KiB", *tiny])
    assert exit_.value.code == 1 and "over memory=0.0 MiB (1,024 bytes)" in capsys.readouterr().err


def _distill_updates(protocol, tmp_path, monkeypatch, queue=None):
    """The bar's updates while run_distillations distils (and evaluates) every source of ``protocol`` in this process
    (``queue``: reported as a pool worker does, through reproduce's queue, and polled)."""
    dataset, bar = load_dataset("moons"), RecordingBar(total=None)
    updates = []
    monkeypatch.setattr(bar, "update", lambda n=1: (RecordingBar.update(bar, n), updates.append(n)))
    if queue is None:
        reproduce.run_distillations(protocol, dataset, tmp_path, None, bar, {})
        return dataset, updates
    monkeypatch.setattr(reproduce, "_main_queue", queue)
    costs = {name: reproduce.distill_cost(protocol, dataset, archs)
             for name, archs in reproduce.sources(protocol, dataset).items()}
    progress = reproduce.DistillProgress(bar, costs, protocol.outer_epochs * 4, queue)  # 4 batches of 250
    reproduce.distill_source(protocol, "2-layer", tmp_path, False)
    progress.poll()
    return dataset, updates


def test_the_bar_advances_with_every_outer_step_of_every_distillation(tmp_path, monkeypatch):
    protocol = reproduce.Protocol(**{**TINY, "batch_size": 250, "outer_epochs": 2})
    dataset, updates = _distill_updates(protocol, tmp_path, monkeypatch)
    outer = 2 * 4  # outer_epochs × ⌈1,000 / 250⌉
    assert len(dataset.x_train) == 1000 and len(updates) == 4 * outer + 4  # 4 sources, a step each, then
    work = reproduce.plan(protocol, dataset, False)                          # each source's evaluation
    assert sum(updates[:4 * outer]) == work["distill"] and sum(updates[4 * outer:]) == work["evaluate"]


def test_a_worker_processes_outer_steps_reach_the_main_bar(tmp_path, monkeypatch):
    import queue

    protocol = reproduce.Protocol(**{**TINY, "batch_size": 250, "outer_epochs": 2})
    dataset, updates = _distill_updates(protocol, tmp_path, monkeypatch, queue.Queue())
    archs = reproduce.sources(protocol, dataset)["2-layer"]
    assert len(updates) == 8 and sum(updates) == reproduce.distill_cost(protocol, dataset, archs)


def test_costs_weigh_tasks_by_their_work():
    protocol, dataset = reproduce.Protocol(), load_dataset("moons")
    one, two, four = (reproduce._arch(f"{k}-layer", dataset) for k in (1, 2, 4))
    assert reproduce.training_cost([two] * 3, 10) == reproduce.training_cost([two], 10)  # copies: one batched step
    assert reproduce.training_cost([one, two, four], 10) == sum(reproduce.training_cost([a], 10) for a in (one, two, four))
    assert reproduce.evaluate_cost(protocol, dataset, ["s1"]) == 10 * reproduce.evaluate_cost(protocol, dataset, ["none"])
    work = reproduce.plan(protocol, dataset, sweeps=False)
    assert work["distill"] > work["evaluate"] > work["baseline"] > 0  # the paper's protocol: distillation dominates


@pytest.fixture(scope="module")
def moons_and_data():
    dataset = load_dataset("moons")
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(10, 4, 2, generator=generator)  # some points far outside the real data
    y = torch.tensor([0, 0, 1, 1]).repeat(10, 1)
    lrs = torch.rand(30, generator=generator, dtype=torch.float64) + 0.1
    data = {name: DistilledData(x=x, y=y, lrs=lrs, config={"steps": 10}) for name in ("2-layer", "mixed")}
    return dataset, data


def _labelled(fig, ylabel: bool = True) -> None:
    """A title, x (and y) axis labels, a legend."""
    assert fig._suptitle is not None and fig._suptitle.get_text()
    assert any(axis.get_xlabel() for axis in fig.axes)
    assert not ylabel or any(axis.get_ylabel() for axis in fig.axes)
    assert fig.legends or any(axis.get_legend() for axis in fig.axes)


def test_synthetic_figure_keeps_every_point_inside_and_has_a_class_legend(moons_and_data):
    dataset, data = moons_and_data
    fig = figures.plot_synthetic(dataset, data)
    _labelled(fig)
    (x0, x1), (y0, y1) = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
    shown = torch.cat([d.x[s - 1] for d in data.values() for s in figures.synthetic_steps(10)])
    assert x0 < shown[:, 0].min() and shown[:, 0].max() < x1 and y0 < shown[:, 1].min() and shown[:, 1].max() < y1
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {"class 0", "class 1"}


def test_lrs_figure_has_integer_steps_and_labelled_epochs(moons_and_data):
    _, data = moons_and_data
    fig = figures.plot_lrs(data, title="restart 0")
    _labelled(fig)
    fig.canvas.draw()  # let the locator place its ticks
    ticks = fig.axes[0].get_xticks()
    assert np.all(ticks == np.round(ticks))
    assert [t.get_text().strip() for t in fig.axes[0].texts] == ["epoch 1", "epoch 2", "epoch 3"]
    assert "restart 0" in fig._suptitle.get_text()


def test_accuracy_figure_explains_strategies_and_keeps_a_far_reference_off_the_scale():
    accuracies = {f"distilled for {a}": {s: {"4-layer": [0.86, 0.88, 0.9]} for s in ("none", "s1", "s2", "s3")}
                  for a in ("1-layer", "2-layer")}
    fig = figures.plot_strategy_accuracies(accuracies, {"4-layer": [0.999, 0.999]})
    _labelled(fig, ylabel=False)  # the rows are labelled by what the data was distilled for
    assert fig.axes[0].get_xlim()[1] < 0.95  # the 0.999 full-data reference did not stretch the axis
    assert "0.999" in fig.axes[0].get_title() and any("0.999" in t.get_text() for t in fig.axes[0].texts)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert all(f"{s}:" in legend for s in ("none", "s1", "s2", "s3")) and "full data" in legend
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(accuracies)


def test_every_figure_is_titled_labelled_and_explained(moons_and_data):
    dataset, data = moons_and_data
    summary = {"mean": 0.9, "std": 0.01, "ci95": [0.89, 0.91], "n": 2}
    model = torch.nn.Linear(2, 1)
    for fig in (
        figures.plot_dataset(dataset),
        figures.plot_boundaries(dataset, {"full data": [("1-layer", model, 0.88)]}),
        figures.plot_sweeps({"epochs": {"1": summary, "5": summary}, "steps": {"1": summary, "10": summary}}),
    ):
        _labelled(fig)
    _labelled(figures.plot_accuracies({"2-layer": {"none": [0.8, 0.9], "s2": [0.85, 0.86]}}), ylabel=False)


def test_two_jobs_evaluate_each_source_as_it_is_distilled_with_the_same_results(tmp_path, quick_run):
    """--jobs 2: the pool distils and evaluates (each source's evaluation queued as soon as it is
    distilled): the same tables as in one process, and the phases still end in order."""
    lines = []
    results = reproduce.run(reproduce.Protocol(**TINY), tmp_path, sweeps=False, progress=False, jobs=2,
                            log=lines.append)
    alone = quick_run[0]
    assert results["table1"] == alone["table1"] and results["table2"] == alone["table2"]
    assert [line.split(":")[0] for line in lines] == ["baseline", "distill", "evaluate", "figures"]
    assert results["timing"]["evaluate"] > 0 and results["phases"]["evaluate"] >= 0
