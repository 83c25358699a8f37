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
``distilled/``, all written atomically. One progress bar covers the run, its units each task's
estimated work (:func:`plan`), each distillation advancing it at every outer step, in worker
processes too (:class:`DistillProgress`); a line is logged as each phase ends (:class:`Phases`).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
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
    distilled_accuracies_of_sets,
    median_index,
    summarize,
    summarize_table,
    train_full_many,
)
from memdistill.distill.training import STRATEGIES, train_many
from memdistill.engine.threads import intra_op_threads
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
    method: str = "replay"  # same bits as the paper's checkpointing; the protocol's 30 tiny models store little
    memory: int | None = None  # the engine's budget in bytes for one sweep's stored states (--memory)
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
"""Overrides of :class:`Protocol` for ``--quick`` (9 s measured on 2 CPU cores, figures
included); the larger outer_lr makes up for the 16× fewer outer steps. Its results are marked as
a quick run (``run(quick=True)``): they show none of the paper's effects."""


class Phases:
    """Wall seconds of each phase of a run, a line when each ends, the progress bar's postfix.

    ``with phases("distill", "4 sources × 10 restarts"): ...`` adds the phase's wall seconds to
    ``phases.seconds`` and then calls ``log("distill: 4 sources × 10 restarts in 12.3 s")``.
    """

    def __init__(self, bar: tqdm, log: Callable[[str], None] | None) -> None:
        self.bar, self.log, self.seconds = bar, log, {}
        self.started: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str, what: str) -> Iterator[None]:
        self.start(phase)
        yield
        self.end(phase, what)

    def start(self, phase: str) -> None:
        """``phase`` begins now (for phases that overlap others, without ``with``)."""
        self.started[phase] = time.perf_counter()
        self.bar.set_postfix_str(phase)

    def end(self, phase: str, what: str) -> None:
        """``phase`` ends now: its wall seconds are added and its line logged."""
        seconds = time.perf_counter() - self.started.pop(phase)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        if self.log is not None:
            self.log(f"{phase}: {what} in {seconds:.1f} s")


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
    on_step: Callable[[int], None] | None = None,
) -> DistilledData | list[DistilledData]:
    """One distillation of the training part with the protocol's settings; with ``restarts``
    R of them batched in one computation (restart r with seed ``seed + r``); ``on_step``: see
    :meth:`Distiller.fit`."""
    distiller = Distiller(
        list(archs),
        steps=steps or protocol.steps,
        epochs=epochs or protocol.epochs,
        per_class=protocol.per_class,
        method=protocol.method,
        memory=protocol.memory,
        momentum=protocol.momentum,
        init_lr=protocol.init_lr,
        outer_lr=protocol.outer_lr,
        seed=seed,
        progress=progress,
        restarts=restarts,
    )
    result = distiller.fit(dataset.x_train, dataset.y_train, protocol.outer_epochs, protocol.batch_size,
                           on_step=on_step)
    for data in result if isinstance(result, list) else [result]:
        data.config["data"] = protocol.data
    return result


def _arch(name: str, dataset: Dataset) -> MLP:
    return mlp(name, dataset.in_features, dataset.out_features)


def sources(protocol: Protocol, dataset: Dataset) -> dict[str, list[MLP]]:
    """Internal models of each distillation: m copies of each architecture, and one of each."""
    single = {name: [_arch(name, dataset)] * protocol.models for name in protocol.archs}
    return {**single, MIXED: [_arch(name, dataset) for name in protocol.archs]}


DISTILL_WEIGHT = 6
"""Cost of one inner step of a distillation relative to one training step of a test model:
forward sweep, recomputation and the reverse sweep of ``checkpoint`` over B = restarts × m rows."""
BASELINE_WEIGHT = 0.9
"""Cost of one full-data step (all training points) of one baseline model per linear layer."""
FIGURES_COST = 100_000
"""Cost of the figures (and of retraining the two models each boundary panel shows)."""


def training_cost(archs: Sequence[MLP], steps: int) -> int:
    """Estimated work of ``steps`` inner steps of every model of ``archs``: steps × (linear
    layers + 2) per distinct architecture (a tiny MLP's step costs a fixed overhead plus its kernel
    launches, ∝ depth; copies of one architecture train as the rows of one batched step).
    Calibrated on process seconds of each task of ``--quick`` (one thread)."""
    return steps * sum(len(arch.hidden) + 3 for arch in set(archs))


def distill_cost(
    protocol: Protocol, dataset: Dataset, archs: Sequence[MLP], *, steps: int | None = None, epochs: int | None = None
) -> int:
    """Estimated work of one (restart-batched) distillation: outer steps × n inner steps."""
    outer = protocol.outer_epochs * math.ceil(len(dataset.x_train) / protocol.batch_size)
    n = (steps or protocol.steps) * (epochs or protocol.epochs)
    return DISTILL_WEIGHT * training_cost(archs, outer * n)


def evaluate_cost(
    protocol: Protocol, dataset: Dataset, strategies: Sequence[str] = STRATEGIES, *, steps: int | None = None,
    epochs: int | None = None, archs: Sequence[str] | None = None
) -> int:
    """Estimated work of testing one distilled set: every test architecture (``archs``, default
    the protocol's) × strategy, whose schedule runs n = s·e steps (none) or s × ``total_epochs``
    (s1–s3, s3 at least n)."""
    s, n = steps or protocol.steps, (steps or protocol.steps) * (epochs or protocol.epochs)
    lengths = {"none": n, "s1": s * protocol.total_epochs, "s2": s * protocol.total_epochs,
               "s3": max(n, s * protocol.total_epochs)}
    names = protocol.archs if archs is None else archs
    return sum(training_cost([_arch(name, dataset)], lengths[strategy]) for name in names for strategy in strategies)


SET_WEIGHT = 0.06
"""Cost of each further distilled set tested in the same computation (its models train as more
rows of the same batched steps) relative to the first: 10 sets at once measured 1.56× one set
(``bench/test_bench_training.py`` (c), 6.4× faster than set by set)."""


def source_evaluate_cost(protocol: Protocol, dataset: Dataset) -> int:
    """Estimated work of testing a source's ``restarts`` distilled sets together (:func:`evaluate_source`)."""
    return round(evaluate_cost(protocol, dataset) * (1 + SET_WEIGHT * (protocol.restarts - 1)))


def baseline_cost(protocol: Protocol, dataset: Dataset, name: str) -> int:
    """Estimated work of the full-data baseline of one architecture (its models batched)."""
    layers = len(_arch(name, dataset).hidden) + 1
    return round(BASELINE_WEIGHT * protocol.baseline_inits * protocol.baseline_epochs * layers)


def sweep_points(protocol: Protocol) -> list[tuple[str, int, dict[str, int], int]]:
    """(swept name, value, distillation shape {steps, epochs}, internal models) of every sweep
    point: epochs (1 model, 1 step), steps (1 model, 1 epoch), models (10 steps, 1 epoch)."""
    return [
        *(("epochs", v, dict(steps=1, epochs=v), 1) for v in protocol.sweep_epochs),
        *(("steps", v, dict(steps=v, epochs=1), 1) for v in protocol.sweep_steps),
        *(("models", v, dict(steps=10, epochs=1), v) for v in protocol.sweep_models),
    ]


def sweep_cost(protocol: Protocol, dataset: Dataset, shape: dict[str, int], models: int) -> int:
    """Estimated work of one sweep point: its distillation and its test models (strategy none)."""
    arch = _arch(protocol.sweep_arch, dataset)
    return distill_cost(protocol, dataset, [arch] * models, **shape) + evaluate_cost(
        protocol, dataset, ["none"], archs=[protocol.sweep_arch], **shape
    )


def distill_source(
    protocol: Protocol, source: str, out: Path, progress: bool, on_step: Callable[[str, int], None] | None = None
) -> tuple[list[DistilledData], float]:
    """All restarts of ``source`` in one batched distillation (restart r: seed ``protocol.seed + r``),
    saved as ``out/distilled/<source>-r<r>.safetensors``; returns (the data, seconds).
    ``on_step(source, outer steps taken)`` after every outer step (default: in a worker of
    :func:`_pool`, a message to the main process's :class:`DistillProgress`)."""
    start, dataset = time.perf_counter(), load_dataset(protocol.data)
    archs = sources(protocol, dataset)[source]
    report = on_step if on_step is not None or _main_queue is None else _to_main
    distilled = distill(protocol, dataset, archs, protocol.seed, restarts=protocol.restarts, progress=progress,
                        on_step=None if report is None else lambda done: report(source, done))
    for restart, data in enumerate(distilled):
        data.save(out / "distilled" / f"{source}-r{restart}.safetensors")
    return distilled, time.perf_counter() - start


def evaluate_source(
    protocol: Protocol, datas: Sequence[DistilledData]
) -> tuple[list[dict[str, dict[str, list[float]]]], float]:
    """Test ``eval_inits`` fresh models of every architecture with every strategy on each of a
    source's distilled sets (restart r's models from seeds r·eval_inits, …), the models of all
    restarts trained together (:func:`distilled_accuracies_of_sets`: the numbers of one set at a
    time); returns (accuracies[restart][strategy][test arch], seconds)."""
    start, dataset = time.perf_counter(), load_dataset(protocol.data)
    by_arch = {
        (strategy, name): distilled_accuracies_of_sets(
            datas, dataset, _arch(name, dataset), strategy, inits=protocol.eval_inits,
            total_epochs=protocol.total_epochs)
        for strategy in STRATEGIES for name in protocol.archs
    }
    accuracies = [{strategy: {name: by_arch[strategy, name][r] for name in protocol.archs} for strategy in STRATEGIES}
                  for r in range(len(datas))]
    return accuracies, time.perf_counter() - start


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread, then restore the count: the protocol's models are
    tiny, so intra-op threads only contend (on a loaded 2-core machine, 2 threads made the
    full-data baseline 15× slower in wall time), and every process of ``jobs`` > 1 runs one too."""
    with intra_op_threads(1):
        yield


_main_queue: Any = None
"""In a worker process of :func:`_pool`: the queue of (source, outer steps taken) to the main process."""


def _to_main(source: str, done: int) -> None:
    """Tell the main process (:meth:`DistillProgress.poll`) that ``source`` took ``done`` outer steps."""
    _main_queue.put((source, done))


def _worker(queue: Any) -> None:
    """Set-up of a worker process: one torch thread, outer steps reported to ``queue``."""
    global _main_queue
    torch.set_num_threads(1)
    _main_queue = queue


@contextmanager
def _pool(jobs: int) -> Iterator[tuple[ProcessPoolExecutor | None, Any]]:
    """(``jobs`` spawned one-thread worker processes, the queue their distillations report outer
    steps to), or (None, None) (jobs = 1: work in this process)."""
    if jobs == 1:
        yield None, None
        return
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker, initargs=(queue,)) as pool:
        yield pool, queue


class DistillProgress:
    """Advances the bar by each distillation's :func:`distill_cost` as its outer steps are taken
    (to ``⌊cost · steps taken / outer steps⌋``, whole units), so that the ETA follows the
    distillations step by step."""

    def __init__(self, bar: tqdm, costs: dict[str, int], steps: int, queue: Any = None) -> None:
        self.bar, self.costs, self.steps, self.queue = bar, costs, steps, queue
        self.done = dict.fromkeys(costs, 0)

    def step(self, source: str, done: int) -> None:
        """``source`` has taken ``done`` outer steps (a late or repeated report changes nothing)."""
        if done > self.done[source]:
            cost, last = self.costs[source], self.done[source]
            if units := cost * done // self.steps - cost * last // self.steps:
                self.bar.update(units)
            self.done[source] = done

    def finish(self, source: str) -> None:
        """``source`` is done: the bar holds its whole cost."""
        self.step(source, self.steps)

    def poll(self) -> None:
        """Take the reports the worker processes sent since the last call."""
        while self.queue is not None:
            try:
                self.step(*self.queue.get_nowait())
            except Empty:
                return


def run_baseline(protocol: Protocol, dataset: Dataset, bar: tqdm) -> dict[str, list[float]]:
    """Test accuracies of the full-data baseline of every architecture."""
    baseline = {}
    for name in protocol.archs:
        baseline[name] = baseline_accuracies(
            dataset,
            _arch(name, dataset),
            inits=protocol.baseline_inits,
            epochs=protocol.baseline_epochs,
            lr=protocol.baseline_lr,
            seed=protocol.seed,
        )
        bar.update(baseline_cost(protocol, dataset, name))
    return baseline


def run_distillations(
    protocol: Protocol, dataset: Dataset, out: Path, pool: ProcessPoolExecutor | None, bar: tqdm, task_seconds: dict,
    queue: Any = None, phases: Phases | None = None
) -> tuple[dict[str, list[DistilledData]], dict[str, dict[str, dict[str, list[float]]]]]:
    """Distil every source (its restarts batched), the costliest first, and evaluate each as soon
    as it is distilled (:func:`evaluate_source`: in the pool, while the other distillations run);
    returns (distilled[source], accuracies[source][strategy][arch], restart by restart).

    The bar advances with every outer step (``queue``: where the pool's workers report them) and
    each evaluation. ``phases``: "distill" ends when the last distillation does, "evaluate"
    (the wall time it adds) when the last evaluation does.
    """
    archs = sources(protocol, dataset)
    costs = {name: distill_cost(protocol, dataset, archs[name]) for name in archs}
    names = sorted(archs, key=lambda name: -costs[name])
    outer = protocol.outer_epochs * math.ceil(len(dataset.x_train) / protocol.batch_size)
    progress = DistillProgress(bar, costs, outer, queue)
    distilled: dict[str, list[DistilledData]] = {}
    outputs: dict[str, list] = {}

    def distilled_one(name: str, data: list[DistilledData], seconds: float) -> None:
        distilled[name] = data
        task_seconds["distill"] = task_seconds.get("distill", 0.0) + seconds
        progress.finish(name)
        if len(distilled) == len(names) and phases is not None:
            phases.end("distill", f"{len(names)} sources × {protocol.restarts} restarts")
            phases.start("evaluate")

    def evaluated_one(name: str, accs: list, seconds: float) -> None:
        outputs[name] = accs
        task_seconds["evaluate"] = task_seconds.get("evaluate", 0.0) + seconds
        bar.update(source_evaluate_cost(protocol, dataset))

    if phases is not None:
        phases.start("distill")
    if pool is None:
        for name in names:
            distilled_one(name, *distill_source(protocol, name, out, False, progress.step))
        for name in names:
            evaluated_one(name, *evaluate_source(protocol, distilled[name]))
    else:
        tasks = {pool.submit(distill_source, protocol, name, out, False): (distilled_one, name) for name in names}
        pending = set(tasks)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            progress.poll()
            for future in done:
                then, name = tasks.pop(future)
                then(name, *future.result())
                if then is distilled_one:   # queued behind the distillations not yet started
                    evaluation = pool.submit(evaluate_source, protocol, distilled[name])
                    tasks[evaluation] = (evaluated_one, name)
                    pending.add(evaluation)
            bar.refresh()
    if phases is not None:
        phases.end("evaluate", f"{len(names)} sources × {protocol.restarts} restarts × {len(STRATEGIES)} strategies × "
                   f"{len(protocol.archs)} architectures × {protocol.eval_inits} test models")
    accuracies = {
        source: {s: {a: [v for per_restart in outputs[source] for v in per_restart[s][a]] for a in protocol.archs}
                 for s in STRATEGIES}
        for source in archs
    }
    return {name: distilled[name] for name in archs}, accuracies


def plan(protocol: Protocol, dataset: Dataset, sweeps: bool) -> dict[str, int]:
    """Estimated work of each phase (the progress bar's units, so that its ETA weighs each task
    by its cost): baseline, distill, evaluate, sweeps, figures."""
    archs = sources(protocol, dataset)
    work = {
        "baseline": sum(baseline_cost(protocol, dataset, name) for name in protocol.archs),
        "distill": sum(distill_cost(protocol, dataset, a) for a in archs.values()),
        "evaluate": len(archs) * source_evaluate_cost(protocol, dataset),
        "figures": FIGURES_COST,
    }
    if sweeps:
        work["sweeps"] = sum(sweep_cost(protocol, dataset, shape, m) for _, _, shape, m in sweep_points(protocol))
    return work


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left{postfix}"


def run(
    protocol: Protocol,
    out: str | Path,
    *,
    sweeps: bool = False,
    progress: bool = True,
    jobs: int = 1,
    quick: bool = False,
    log: Callable[[str], None] | None = tqdm.write,
) -> dict[str, Any]:
    """Run the protocol, write results.json, report.md, figures and distilled sets to ``out``.

    Args:
      progress: one tqdm bar over the whole run, its units each task's estimated cost
        (:func:`plan`), so the time left weighs cheap and costly tasks alike.
      jobs: processes that run distillations (one per source, its restarts batched) and
        evaluations (one per distilled set) at once (1: in this process), each with one torch
        thread (:func:`one_thread`). The results do not depend on it: every distillation and
        test model has its own seed.
      quick: marks the results as a quick run (``--quick``): results.json ``"quick": true``, a
        banner atop report.md, :data:`figures.QUICK_NOTE` in every figure title.
      log: called with a line as each phase ends (``"distill: … in 12.3 s"``); None: silent.

    Returns:
      The results (the content of results.json): ``phases`` holds the wall seconds of each phase,
      ``timing`` the seconds of each phase summed over its tasks (with jobs > 1 that exceeds
      the wall time), ``seconds`` the whole run's.
    """
    if jobs < 1:
        raise ValueError(f"reproduce: jobs must be >= 1, got {jobs}")
    start, out, task_seconds = time.perf_counter(), Path(out), {}
    dataset = load_dataset(protocol.data)
    work = plan(protocol, dataset, sweeps)
    with tqdm(total=sum(work.values()), desc="reproduce", bar_format=BAR_FORMAT, smoothing=0,
              disable=not progress) as bar, one_thread():
        phases = Phases(bar, log)
        with phases("baseline", f"{len(protocol.archs)} architectures × {protocol.baseline_inits} full-data models"):
            baseline = run_baseline(protocol, dataset, bar)
        task_seconds["baseline"] = phases.seconds["baseline"]
        with _pool(jobs) as (pool, queue):
            distilled, accuracies = run_distillations(protocol, dataset, out, pool, bar, task_seconds, queue, phases)
        results: dict[str, Any] = {
            "quick": quick,
            "baseline": {name: summarize(values) for name, values in baseline.items()},
            "table1": {source: summarize_table(accuracies[source]) for source in protocol.archs},
            "table2": summarize_table(accuracies[MIXED]),
            "config": {**dataclasses.asdict(protocol), "jobs": jobs},
        }
        if sweeps:
            with phases("sweeps", f"{len(sweep_points(protocol))} distillations"):
                sweep_arch = _arch(protocol.sweep_arch, dataset)
                results["sweeps"] = run_sweeps(protocol, dataset, sweep_arch, progress=progress, bar=bar)
            task_seconds["sweeps"] = phases.seconds["sweeps"]
        with phases("figures", "PNG figures"):
            drawn = write_figures(out, dataset, baseline, distilled, accuracies, results, protocol)
            bar.update(FIGURES_COST)
        task_seconds["figures"] = phases.seconds["figures"]
    results["timing"] = task_seconds
    results["phases"] = phases.seconds
    results["figure_seconds"] = drawn
    results["seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", render_report(results, list(drawn)))
    return results


def run_sweeps(
    protocol: Protocol, dataset: Dataset, arch: MLP, *, progress: bool = True, bar: tqdm | None = None
) -> dict[str, dict[str, Any]]:
    """Test accuracy of ``arch`` (strategy none, ``eval_inits`` models) vs internal epochs
    (1 model, 1 step), internal steps (1 model, 1 epoch) and internal models (10 steps, 1 epoch);
    ``bar`` advances by each point's :func:`sweep_cost`."""
    results: dict[str, dict[str, Any]] = {}
    for name, value, shape, models in sweep_points(protocol):
        data = distill(protocol, dataset, [arch] * models, protocol.seed, progress=progress, **shape)
        accs = distilled_accuracies(data, dataset, arch, None, inits=protocol.eval_inits)
        results.setdefault(name, {})[str(value)] = summarize(accs)
        if bar is not None:
            bar.update(sweep_cost(protocol, dataset, shape, models))
    return results


SOURCE_LABELS = {MIXED: "mixed (one of each)"}
"""Row labels of the accuracy figure; any other source ``A`` reads "distilled for A"."""


def write_figures(
    out: Path,
    dataset: Dataset,
    baseline: dict[str, list[float]],
    distilled: dict[str, list[DistilledData]],
    accuracies: dict[str, dict[str, dict[str, list[float]]]],
    results: dict[str, Any],
    protocol: Protocol,
) -> dict[str, float]:
    """Draw and write the PNG figures (2-D plots only for 2 features), each titled with
    :data:`figures.QUICK_NOTE` when ``results["quick"]``; returns file name → seconds it took."""
    note = figures.QUICK_NOTE if results.get("quick") else ""
    first = {source: runs[0] for source, runs in distilled.items()}
    draw: dict[str, Callable[[], Any]] = {}
    if dataset.in_features == 2:
        draw["data.png"] = lambda: figures.plot_dataset(dataset, note=note)
        draw["boundaries.png"] = lambda: figures.plot_boundaries(dataset, {
            "full data": [median_baseline(dataset, name, baseline[name], protocol) for name in baseline],
            "on data distilled for it": [median_distilled(dataset, name, distilled, accuracies, protocol) for name in baseline],
        }, note=note)
        draw["synthetic.png"] = lambda: figures.plot_synthetic(
            dataset, first, note=note,
            title=f"Synthetic objects x̃ of restart 0 of each distilled set, at {len(figures.synthetic_steps(protocol.steps))}"
            f" of its s = {protocol.steps} inner steps")
    draw["lrs.png"] = lambda: figures.plot_lrs(
        first, note=note, title="Learned learning rate η̃_k of each inner step (restart 0 of each distilled set)")
    rows = {SOURCE_LABELS.get(source, f"distilled for {source}"): by_strategy for source, by_strategy in accuracies.items()}
    draw["accuracy.png"] = lambda: figures.plot_strategy_accuracies(
        rows, baseline, note=note,
        title=f"Test accuracy of fresh models trained on the distilled data ({protocol.restarts} restarts × "
        f"{protocol.eval_inits} models per cell), by training strategy")
    if "sweeps" in results:
        fixed = {"epochs": "1 model, 1 step", "steps": "1 model, 1 epoch", "models": "10 steps, 1 epoch"}
        draw["sweeps.png"] = lambda: figures.plot_sweeps(results["sweeps"], fixed=fixed, note=note)
    seconds = {}
    for name, plot in draw.items():
        start = time.perf_counter()
        figures.save_png(plot(), out / name)
        seconds[name] = time.perf_counter() - start
    return seconds


def median_baseline(dataset: Dataset, name: str, accs: list[float], protocol: Protocol) -> tuple:
    """(name, model, accuracy) of the median full-data model, retrained from its seed as a row,
    as :func:`baseline_accuracies` trained it."""
    i = median_index(accs)
    (model,) = train_full_many(
        dataset, _arch(name, dataset), [protocol.seed + i], epochs=protocol.baseline_epochs, lr=protocol.baseline_lr
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
    (model,) = train_many(distilled[name][restart], _arch(name, dataset), [restart * protocol.eval_inits + init])
    return name, model, accs[i]
