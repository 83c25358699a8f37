"""One-command reproduction of the paper's experiments (PAPER.md, experiments 2–5, and 1
behind ``sweeps``).

Protocol, with the paper's settings as the defaults of :class:`Protocol`:

1. full-data baseline: ``baseline_inits`` models per architecture (see
   :mod:`memdistill.distill.evaluation` for the optimiser);
2. Table 1: for each architecture A, ``restarts`` distillations with m = ``models`` copies of A;
   each distilled set trains ``eval_inits`` fresh models of every test architecture with every
   strategy (none, s1, s2, s3);
3. Table 2: the same with m = 3 internal models, one of each architecture ("mixed");
4. sweeps (optional): test accuracy vs internal epochs (1 model, 1 step), internal steps
   (1 model, 1 epoch) and internal models (10 steps, 1 epoch).

Outputs in ``out``: results.json, report.md, PNG figures and every distilled set under
``distilled/``, all written atomically.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from memdistill.apps import figures
from memdistill.apps.report import render_report
from memdistill.atomic import write_json_atomic, write_text_atomic
from memdistill.data import Dataset, load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import (
    baseline_accuracies,
    distilled_accuracies,
    median_index,
    summarize,
    summarize_table,
    train_full,
)
from memdistill.distill.training import STRATEGIES, train_on
from memdistill.models import MLP, mlp

MIXED = "mixed"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Settings of a reproduction; the defaults are the paper's (PAPER.md)."""

    data: str = "moons"
    archs: tuple[str, ...] = ("1-layer", "2-layer", "4-layer")
    restarts: int = 10
    steps: int = 40
    epochs: int = 5
    per_class: int = 4
    models: int = 3
    outer_epochs: int = 50
    batch_size: int = 64
    method: str = "checkpoint"
    momentum: float = 0.0
    init_lr: float = 0.02
    outer_lr: float = 0.01
    total_epochs: int = 50
    eval_inits: int = 5
    baseline_inits: int = 25
    baseline_epochs: int = 500
    baseline_lr: float = 0.1
    seed: int = 0
    sweep_arch: str = "2-layer"
    sweep_epochs: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    sweep_steps: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    sweep_models: tuple[int, ...] = (1, 2, 5, 10, 20)


QUICK = dict(
    restarts=2,
    steps=10,
    epochs=2,
    outer_epochs=5,
    outer_lr=0.05,
    total_epochs=20,
    eval_inits=2,
    baseline_inits=10,
    sweep_epochs=(1, 5),
    sweep_steps=(1, 5),
    sweep_models=(1, 3),
)
"""Overrides of :class:`Protocol` for ``--quick`` (about 15 seconds on 2 CPU cores); the larger
outer_lr makes up for the 16× fewer outer steps."""


class Clock:
    """Seconds spent per phase: ``with clock("distill"): ...`` adds to ``clock.seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def distill(
    protocol: Protocol,
    dataset: Dataset,
    archs: Sequence[MLP],
    seed: int,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    restarts: int | None = None,
    progress: bool = True,
) -> DistilledData | list[DistilledData]:
    """One distillation of the training part with the protocol's settings; with ``restarts``
    R of them batched in one computation (restart r with seed ``seed + r``)."""
    distiller = Distiller(
        list(archs),
        steps=steps or protocol.steps,
        epochs=epochs or protocol.epochs,
        per_class=protocol.per_class,
        method=protocol.method,
        momentum=protocol.momentum,
        init_lr=protocol.init_lr,
        outer_lr=protocol.outer_lr,
        seed=seed,
        progress=progress,
        restarts=restarts,
    )
    result = distiller.fit(dataset.x_train, dataset.y_train, protocol.outer_epochs, protocol.batch_size)
    for data in result if isinstance(result, list) else [result]:
        data.config["data"] = protocol.data
    return result


def _arch(name: str, dataset: Dataset) -> MLP:
    return mlp(name, dataset.in_features, dataset.out_features)


def sources(protocol: Protocol, dataset: Dataset) -> dict[str, list[MLP]]:
    """Internal models of each distillation: m copies of each architecture, and one of each."""
    single = {name: [_arch(name, dataset)] * protocol.models for name in protocol.archs}
    return {**single, MIXED: [_arch(name, dataset) for name in protocol.archs]}


def distill_source(protocol: Protocol, source: str, out: Path, progress: bool) -> tuple[list[DistilledData], float]:
    """All restarts of ``source`` in one batched distillation (restart r: seed ``protocol.seed + r``),
    saved as ``out/distilled/<source>-r<r>.safetensors``; returns (the data, seconds)."""
    start, dataset = time.perf_counter(), load_dataset(protocol.data)
    archs = sources(protocol, dataset)[source]
    distilled = distill(protocol, dataset, archs, protocol.seed, restarts=protocol.restarts, progress=progress)
    for restart, data in enumerate(distilled):
        data.save(out / "distilled" / f"{source}-r{restart}.safetensors")
    return distilled, time.perf_counter() - start


def evaluate_restart(
    protocol: Protocol, data: DistilledData, restart: int
) -> tuple[dict[str, dict[str, list[float]]], float]:
    """Test ``eval_inits`` fresh models of every architecture with every strategy on one
    distilled set; returns (accuracies[strategy][test arch], seconds)."""
    start, dataset = time.perf_counter(), load_dataset(protocol.data)
    accuracies = {
        strategy: {
            name: distilled_accuracies(
                data,
                dataset,
                _arch(name, dataset),
                strategy,
                inits=protocol.eval_inits,
                seed=restart * protocol.eval_inits,
                total_epochs=protocol.total_epochs,
            )
            for name in protocol.archs
        }
        for strategy in STRATEGIES
    }
    return accuracies, time.perf_counter() - start


def _map(jobs: int, function: Callable, *iterables: Sequence) -> Iterator:
    """``map`` in this process (jobs = 1) or in ``jobs`` spawned one-thread processes."""
    if jobs == 1:
        yield from map(function, *iterables)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        yield from pool.map(function, *iterables)


def run_baseline(protocol: Protocol, dataset: Dataset, bar: tqdm) -> dict[str, list[float]]:
    """Test accuracies of the full-data baseline of every architecture."""
    baseline = {}
    for name in protocol.archs:
        bar.set_postfix_str(f"baseline {name}")
        baseline[name] = baseline_accuracies(
            dataset,
            _arch(name, dataset),
            inits=protocol.baseline_inits,
            epochs=protocol.baseline_epochs,
            lr=protocol.baseline_lr,
            seed=protocol.seed,
        )
        bar.update()
    return baseline


def run_restarts(
    protocol: Protocol, out: Path, names: list[str], jobs: int, bar: tqdm, clock: Clock
) -> tuple[dict[str, list[DistilledData]], dict[str, dict[str, dict[str, list[float]]]]]:
    """Distil every source (its restarts batched), then evaluate every (source, restart);
    returns distilled[source] and accuracies[source][strategy][arch]."""
    inner_bars = not bar.disable and jobs == 1
    distilled: dict[str, list[DistilledData]] = {}
    bar.set_postfix_str("distil")
    for source, (data, seconds) in zip(names, _map(jobs, distill_source, [protocol] * len(names), names,
                                                      [out] * len(names), [inner_bars] * len(names))):
        distilled[source] = data
        clock.seconds["distill"] = clock.seconds.get("distill", 0.0) + seconds
        bar.update(len(data))
    accuracies = {source: {s: {a: [] for a in protocol.archs} for s in STRATEGIES} for source in names}
    tasks = [(source, r) for source in names for r in range(protocol.restarts)]
    bar.set_postfix_str("evaluate")
    outputs = _map(jobs, evaluate_restart, [protocol] * len(tasks), [distilled[s][r] for s, r in tasks],
                   [r for _, r in tasks])
    for (source, _), (accs, seconds) in zip(tasks, outputs):
        for strategy, by_arch in accs.items():
            for name, values in by_arch.items():
                accuracies[source][strategy][name] += values
        clock.seconds["evaluate"] = clock.seconds.get("evaluate", 0.0) + seconds
        bar.update()
    return distilled, accuracies


def run(
    protocol: Protocol, out: str | Path, *, sweeps: bool = False, progress: bool = True, jobs: int = 1
) -> dict[str, Any]:
    """Run the protocol, write results.json, report.md, figures and distilled sets to ``out``.

    Args:
      jobs: processes that run distillations (one per source, its restarts batched) and
        evaluations (one per distilled set) at once (1: in this process). The results do not
        depend on it: every distillation and test model has its own seed.

    Returns:
      The results (the content of results.json); ``timing`` sums the seconds of each phase
      over all tasks (with jobs > 1 that exceeds the wall time).
    """
    if jobs < 1:
        raise ValueError(f"reproduce: jobs must be >= 1, got {jobs}")
    start, out, clock = time.perf_counter(), Path(out), Clock()
    dataset = load_dataset(protocol.data)
    names = list(sources(protocol, dataset))
    with tqdm(
        total=len(protocol.archs) + 2 * len(names) * protocol.restarts, desc="reproduce", unit="task",
        disable=not progress,
    ) as bar:
        with clock("baseline"):
            baseline = run_baseline(protocol, dataset, bar)
        distilled, accuracies = run_restarts(protocol, out, names, jobs, bar, clock)
    results: dict[str, Any] = {
        "baseline": {name: summarize(values) for name, values in baseline.items()},
        "table1": {source: summarize_table(accuracies[source]) for source in protocol.archs},
        "table2": summarize_table(accuracies[MIXED]),
        "config": {**dataclasses.asdict(protocol), "jobs": jobs},
    }
    if sweeps:
        with clock("sweeps"):
            sweep_arch = _arch(protocol.sweep_arch, dataset)
            results["sweeps"] = run_sweeps(protocol, dataset, sweep_arch, progress=progress)
    with clock("figures"):
        names = write_figures(out, dataset, baseline, distilled, accuracies, results, protocol)
    results["timing"] = clock.seconds
    results["seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", render_report(results, names))
    return results


def run_sweeps(
    protocol: Protocol, dataset: Dataset, arch: MLP, *, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Test accuracy of ``arch`` (strategy none, ``eval_inits`` models) vs internal epochs
    (1 model, 1 step), internal steps (1 model, 1 epoch) and internal models (10 steps, 1 epoch)."""
    grids = {
        "epochs": [(dict(steps=1, epochs=v), 1) for v in protocol.sweep_epochs],
        "steps": [(dict(steps=v, epochs=1), 1) for v in protocol.sweep_steps],
        "models": [(dict(steps=10, epochs=1), v) for v in protocol.sweep_models],
    }
    results: dict[str, dict[str, Any]] = {}
    for name, points in grids.items():
        results[name] = {}
        for (shape, models), value in zip(points, getattr(protocol, f"sweep_{name}")):
            data = distill(protocol, dataset, [arch] * models, protocol.seed, progress=progress, **shape)
            accs = distilled_accuracies(data, dataset, arch, None, inits=protocol.eval_inits)
            results[name][str(value)] = summarize(accs)
    return results


def write_figures(
    out: Path,
    dataset: Dataset,
    baseline: dict[str, list[float]],
    distilled: dict[str, list[DistilledData]],
    accuracies: dict[str, dict[str, dict[str, list[float]]]],
    results: dict[str, Any],
    protocol: Protocol,
) -> list[str]:
    """Write the PNG figures; return their file names (2-D plots only for 2 features)."""
    first = {source: runs[0] for source, runs in distilled.items()}
    plots = {}
    if dataset.in_features == 2:
        plots["data.png"] = figures.plot_dataset(dataset)
        plots["boundaries.png"] = figures.plot_boundaries(
            dataset,
            {
                "full data": [median_baseline(dataset, name, baseline[name], protocol) for name in baseline],
                "distilled": [
                    median_distilled(dataset, name, distilled, accuracies, protocol) for name in baseline
                ],
            },
        )
        plots["synthetic.png"] = figures.plot_synthetic(dataset, first)
    plots["lrs.png"] = figures.plot_lrs(first)
    groups = {name: {"full data": values} for name, values in baseline.items()}
    for source, by_strategy in accuracies.items():
        for strategy, by_arch in by_strategy.items():
            for name, values in by_arch.items():
                groups[name][f"{source}/{strategy}"] = values
    plots["accuracy.png"] = figures.plot_accuracies(groups)
    if "sweeps" in results:
        plots["sweeps.png"] = figures.plot_sweeps(results["sweeps"])
    for name, figure in plots.items():
        figures.save_png(figure, out / name)
    return list(plots)


def median_baseline(dataset: Dataset, name: str, accs: list[float], protocol: Protocol) -> tuple:
    """(name, model, accuracy) of the median full-data model, retrained from its seed."""
    i = median_index(accs)
    model = train_full(
        dataset,
        _arch(name, dataset),
        protocol.seed + i,
        epochs=protocol.baseline_epochs,
        lr=protocol.baseline_lr,
    )
    return name, model, accs[i]


def median_distilled(
    dataset: Dataset,
    name: str,
    distilled: dict[str, list[DistilledData]],
    accuracies: dict[str, dict[str, dict[str, list[float]]]],
    protocol: Protocol,
) -> tuple:
    """(name, model, accuracy) of the median ``name`` model trained on data distilled for
    ``name`` with the learned schedule, retrained from its restart and seed."""
    accs = accuracies[name]["none"][name]
    i = median_index(accs)
    restart, init = divmod(i, protocol.eval_inits)
    model = train_on(
        distilled[name][restart], _arch(name, dataset), None, restart * protocol.eval_inits + init
    )
    return name, model, accs[i]
