"""``memdistill batch``: the jobs of a job file, sharded over torch.distributed ranks, resumable.

The unit of work is a *run* (:class:`Run`): some restarts of one config (a job file's
:class:`memdistill.apps.jobfile.Config`) distilled together by one :class:`memdistill.Distiller`
(``restarts=R``), ``batch_restarts`` at a time. Two modes:

- **sharding** (default): the runs are dealt to the ranks by :func:`assign` (longest first,
  each to the least loaded rank); each rank distils, evaluates and writes its own runs.
- **data parallel** (``data_parallel = true`` in the job file): every rank takes part in every
  run, ``Distiller(data_parallel=True)`` splitting the internal models of each outer step
  across the ranks; every rank gets the same results, rank 0 evaluates and writes them.

Either way a job's results are the bits a single process computes with the same seeds (with
the same number of torch threads per process). Without a process group (a plain command) the
world is one rank; under ``torchrun`` the group is joined from ``env://`` (gloo on CPU, nccl
with CUDA).

Outputs, all written atomically: ``OUT/<job>/distilled.safetensors`` (its config also records the
data set, its per-feature or per-channel ``mean``/``std`` and ``class_names``), ``metrics.json`` (test
accuracies per strategy × test architecture: mean, std, ci95, and the raw values), PNG figures
(lrs.png, accuracy.png, and synthetic.png for 2 features or grid.png for images);
``OUT/summary.json`` and ``OUT/summary.md`` (rank 0, after every rank is done).

Architectures are names of :func:`memdistill.models.resolve_arch`, built for the data's input shape
and classes (each is built once on the data before any work). Test architectures default to the
paper's MLPs on tabular data and to the job's own ``archs`` on images. Each job distils on its
``device`` (``cuda``: this rank's GPU); the evaluation runs there too.

Resume (``resume=True``): a job is finished when its ``metrics.json`` exists, and is skipped;
a run whose jobs all hold their distilled data is only evaluated; any other run continues its
Distiller checkpoint ``OUT/<first job of the run>/state.pt`` (saved every ``save_every`` outer
steps, removed once the run's data are saved), so a run killed at any point gives the same
bits as an uninterrupted one. Without ``resume``, a job folder holding any of these files is
an error, as is a finished job whose recorded config differs from the job file's.

SIGINT or SIGTERM (a scheduler's) stops a distillation at its next safe point, between two
outer steps, after saving its checkpoint (:class:`memdistill.distill.resume.Interrupted`); a run
that diverges writes each job's last finite and best state (:data:`KEPT_FILES`) beside the
checkpoint of its last finite state, which ``resume`` continues, also with a lower ``outer_lr``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from memdistill.apps import figures
from memdistill.apps.jobfile import PAPER, Config, Evaluation, Job, JobFile, read
from memdistill.apps.report import markdown_table, strategy_table
from memdistill.atomic import write_json_atomic, write_text_atomic
from memdistill.data import Dataset, load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import distilled_accuracies, summarize_table
from memdistill.distill.outer import DivergedError
from memdistill.models import check_arch, resolve_arch

DATA_FILE = "distilled.safetensors"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "state.pt"
KEPT_FILES = {"last-finite": "distilled-last-finite.safetensors", "best": "distilled-best.safetensors"}
"""What a diverged distillation leaves of each job, by DistilledData.config["kept"]."""
Accuracies = dict[str, dict[str, list[float]]]
"""Test accuracies[strategy][test architecture], one per fresh model."""


# ---- the process group ----


@contextmanager
def process_group() -> Iterator[None]:
    """Join torchrun's process group from ``env://`` (gloo on CPU, nccl with CUDA) when this
    process was launched by torchrun and no group exists yet; leave it at the end."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device(name: str = "cpu") -> torch.device:
    """The torch device of a job's ``device`` key: ``"cuda"`` is this rank's GPU (under torchrun the
    one of its LOCAL_RANK), ``"cuda:N"`` GPU N, ``"cpu"`` the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def all_ranks(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


# ---- planning ----


@dataclass(frozen=True)
class Run:
    """Restarts ``first … first + count − 1`` of ``config``, batched in one Distiller."""

    config: Config
    first: int
    count: int

    @property
    def jobs(self) -> tuple[Job, ...]:
        """The jobs whose results this run computes."""
        return tuple(Job(self.config, r) for r in range(self.first, self.first + self.count))


def runs(job_file: JobFile) -> list[Run]:
    """The units of work, in file order: each config's restarts in groups of ``batch_restarts``."""
    sizes = [(c, min(c.batch_restarts or c.restarts, c.restarts)) for c in job_file.configs]
    return [Run(c, first, min(n, c.restarts - first)) for c, n in sizes for first in range(0, c.restarts, n)]


def run_cost(run: Run, train_size: int) -> int:
    """Inner steps the run computes: restarts × m × s·e × outer steps (a proxy of its time)."""
    config = run.config
    outer_steps = config.outer_steps or config.outer_epochs * math.ceil(train_size / config.batch_size)
    return run.count * len(config.internal_archs) * config.steps * config.epochs * outer_steps


def assign(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of the runs of each rank: longest first, each to the least loaded rank (the
    lowest on ties); each rank's indices ascending. Depends only on ``costs`` and ``world_size``."""
    loads = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[index]
        shards[rank].append(index)
    return [sorted(shard) for shard in shards]


def data_key(config: Config) -> tuple[str, str | None, str | None]:
    """What loads a config's data set: (data, label, data_root)."""
    return config.data, config.label, config.data_root


def eval_archs(config: Config, dataset: Dataset) -> tuple[str, ...]:
    """The job's test architectures: ``evaluate.test_archs``, by default the paper's MLPs on
    tabular data and the job's own (distinct) ``archs`` on images."""
    default = tuple(dict.fromkeys(config.archs)) if dataset.is_image else PAPER.archs
    return config.evaluate.test_archs or default


def load_datasets(job_file: JobFile) -> dict[tuple[str, str | None, str | None], Dataset]:
    """Every distinct data set of the job file, loaded once, and every job's archs built on it
    and its device checked; an error names the job key."""
    datasets: dict[tuple[str, str | None, str | None], Dataset] = {}
    for config in job_file.configs:
        where = f"{job_file.path.name}: jobs[{config.index}]"
        if (key := data_key(config)) not in datasets:
            try:
                datasets[key] = load_dataset(config.data, root=config.data_root, label=config.label)
            except ValueError as error:
                raise ValueError(f"{where}.data: {error}") from None
        dataset = datasets[key]
        archs = [("archs", i, name) for i, name in enumerate(config.archs)]
        archs += [("evaluate.test_archs", i, name) for i, name in enumerate(config.evaluate.test_archs or ())]
        for field, i, name in archs:
            try:
                check_arch(name, dataset.in_shape, dataset.classes)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{where}.{field}[{i}]: {str(error).removeprefix('resolve_arch: ')}") from None
        if config.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"{where}.device: {config.device!r}, but torch sees no CUDA device here")
        if config.device.startswith("cuda:") and int(config.device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"{where}.device: {config.device!r}, but torch sees {torch.cuda.device_count()} GPU(s)")
    return datasets


def read_metrics(folder: Path) -> dict[str, Any]:
    """The metrics.json of a job folder."""
    path = folder / METRICS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"batch: {path} is not a metrics file written by memdistill batch ({error})"
        ) from None


def distillation_record(job: Job) -> dict[str, Any]:
    """What makes a job's distilled data: its config record without the evaluation."""
    return {key: value for key, value in job.config.record().items() if key != "evaluate"}


def stale_file(job: Job, folder: Path) -> str | None:
    """The job's metrics.json (else distilled data) if it was made with another config."""
    if (folder / METRICS_FILE).exists():
        return None if read_metrics(folder).get("config") == job.config.record() else METRICS_FILE
    if (folder / DATA_FILE).exists():
        made = DistilledData.load(folder / DATA_FILE).config.get("batch")
        return None if made == distillation_record(job) else DATA_FILE
    return None


def folder_problems(jobs: Sequence[Job], out: Path, resume: bool) -> list[str]:
    """Why the job folders under ``out`` can not be (re)used: results present without
    ``resume``; with ``resume``, results made with another config than the job file's."""
    problems = []
    for job in jobs:
        folder = out / job.name
        present = [name for name in (DATA_FILE, METRICS_FILE, CHECKPOINT_FILE) if (folder / name).exists()]
        stale = stale_file(job, folder) if resume else None
        if present and not resume:
            problems.append(
                f"batch: {folder} already holds {', '.join(present)}; pass --resume to continue, "
                "or choose an empty --out"
            )
        elif stale:
            problems.append(
                f"batch: {folder / stale} was made with another config than jobs[{job.config.index}] "
                f"of the job file; use a new --out for a changed job file"
            )
    return problems


def run_status(run: Run, out: Path) -> str:
    """``"done"`` (every job has metrics), ``"evaluate"`` (every job has its distilled data)
    or ``"distil"``."""
    folders = [out / job.name for job in run.jobs]
    if all((folder / METRICS_FILE).exists() for folder in folders):
        return "done"
    return "evaluate" if all((folder / DATA_FILE).exists() for folder in folders) else "distil"


# ---- one run ----


def distil(
    run: Run, dataset: Dataset, out: Path, *, resume: bool, data_parallel: bool, progress: bool
) -> list[DistilledData]:
    """The run's distilled sets (one per restart), continuing its checkpoint when ``resume``."""
    config = run.config
    archs = [resolve_arch(name, dataset.in_shape, dataset.classes) for name in config.internal_archs]
    distiller = Distiller(
        archs,
        steps=config.steps,
        epochs=config.epochs,
        per_class=config.per_class,
        method=config.method,
        momentum=config.momentum,
        init_lr=config.init_lr,
        outer_lr=config.outer_lr,
        outer_lr_schedule=config.outer_lr_schedule,
        seed=config.seed + run.first,
        soft_labels=config.soft_labels,
        snapshots=config.snapshots,
        memory=config.memory,
        offload=config.offload,
        offload_dir=config.offload_dir,
        compile=config.compile,
        dtype=getattr(torch, config.dtype),
        device=device(config.device),
        progress=progress,
        restarts=run.count,
        data_parallel=data_parallel,
        init=config.init,
        theta0=config.theta0,
    )
    results = distiller.fit(
        dataset.x_train,
        dataset.y_train,
        config.outer_epochs,
        config.batch_size,
        checkpoint=out / run.jobs[0].name / CHECKPOINT_FILE,
        save_every=config.save_every,
        resume=resume,
        outer_steps=config.outer_steps,
    )
    for job, data in zip(run.jobs, results):
        record(job, data, dataset)
    return results


def record(job: Job, data: DistilledData, dataset: Dataset) -> DistilledData:
    """``data`` with its config recording the data set and the job (returned for chaining)."""
    data.config = {
        **data.config,
        "data": job.config.data,
        "label": job.config.label,
        **dataset.display(),
        "job": job.name,
        "restart": job.restart,
        "batch": distillation_record(job),
    }
    return data


def keep_diverged(run: Run, error: DivergedError, dataset: Dataset, out: Path) -> str:
    """Write each job's last finite and best state (:data:`KEPT_FILES`); the failure to report."""
    for job, last, best in zip(run.jobs, error.last, error.best):
        for data in (last, best):
            record(job, data, dataset).save(out / job.name / KEPT_FILES[data.config["kept"]])
    return (f"diverged at outer step {error.step}: {error.reason}; kept {' and '.join(KEPT_FILES.values())} "
            f"in the job folder and the state in {error.checkpoint}: lower outer_lr in the job file and rerun "
            "with --resume to continue from it")


def evaluate(data: DistilledData, dataset: Dataset, config: Config) -> Accuracies:
    """Test accuracies of ``evaluate.inits`` fresh models per strategy and test architecture,
    trained on the job's device."""
    evaluation: Evaluation = config.evaluate
    return {
        strategy: {
            arch: distilled_accuracies(
                data,
                dataset,
                resolve_arch(arch, dataset.in_shape, dataset.classes),
                strategy,
                inits=evaluation.inits,
                seed=evaluation.seed,
                device=device(config.device),
                total_epochs=evaluation.total_epochs,
            )
            for arch in eval_archs(config, dataset)
        }
        for strategy in evaluation.strategies
    }


def write_figures(
    folder: Path, name: str, data: DistilledData, accuracies: Accuracies, dataset: Dataset
) -> list[str]:
    """lrs.png, accuracy.png and, for images, grid.png (the distilled images) or, for 2 features,
    synthetic.png of one job; returns the names."""
    plots = {
        "lrs.png": figures.plot_lrs({name: data}),
        "accuracy.png": figures.plot_accuracies(
            {
                arch: {strategy: accuracies[strategy][arch] for strategy in accuracies}
                for arch in next(iter(accuracies.values()))
            }
        ),
    }
    if dataset.in_features == 2 and not dataset.is_image:
        plots["synthetic.png"] = figures.plot_synthetic(dataset, {name: data})
    for file, figure in plots.items():
        figures.save_png(figure, folder / file)
    if dataset.is_image:
        data.save_grid(folder / "grid.png")  # un-normalised with the mean, std and class names it records
    return [*plots, "grid.png"] if dataset.is_image else list(plots)


def finish_job(
    job: Job, data: DistilledData, dataset: Dataset, out: Path, distil_seconds: float
) -> dict[str, Any]:
    """Evaluate one job's distilled data, write its figures and (last) its metrics.json."""
    start = time.perf_counter()
    accuracies = evaluate(data, dataset, job.config)
    names = (
        write_figures(out / job.name, job.name, data, accuracies, dataset)
        if job.config.evaluate.figures
        else []
    )
    metrics = {
        "job": job.name,
        "restart": job.restart,
        "seed": job.seed,
        "config": job.config.record(),
        "final_loss": data.history[-1],
        "accuracy": summarize_table(accuracies),
        "accuracies": accuracies,
        "figures": names,
        "seconds": {"distil": distil_seconds, "evaluate": time.perf_counter() - start},
    }
    write_json_atomic(out / job.name / METRICS_FILE, metrics)
    return metrics


def remove_partial_writes(folder: Path) -> None:
    """Delete the temporary files of atomic writes (``.<name>.*.tmp``) a killed process left."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def execute(
    run: Run,
    status: str,
    dataset: Dataset,
    out: Path,
    *,
    resume: bool,
    data_parallel: bool,
    writer: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    """Bring every job of ``run`` to finished; return their metrics (none when not ``writer``).

    ``status`` is :func:`run_status`; in data-parallel mode every rank distils, and only the
    writer saves, evaluates and writes.
    """
    start = time.perf_counter()
    if writer and resume:
        for job in run.jobs:
            remove_partial_writes(out / job.name)
    if status == "distil":
        try:
            results = distil(run, dataset, out, resume=resume, data_parallel=data_parallel, progress=progress)
        except DivergedError as error:
            if not writer:
                raise
            raise FloatingPointError(keep_diverged(run, error, dataset, out)) from None
        if data_parallel and dist.is_initialized():
            dist.barrier()  # every rank has written its last checkpoint before the writer removes it
        if writer:
            for job, data in zip(run.jobs, results):
                data.save(out / job.name / DATA_FILE)
            (out / run.jobs[0].name / CHECKPOINT_FILE).unlink(missing_ok=True)
    if not writer:
        return []
    seconds = time.perf_counter() - start
    metrics = []
    for job in run.jobs:
        folder = out / job.name
        if (folder / METRICS_FILE).exists():
            metrics.append(read_metrics(folder))
        else:
            metrics.append(finish_job(job, DistilledData.load(folder / DATA_FILE), dataset, out, seconds))
    return metrics


# ---- progress ----


@contextmanager
def overall_bar(out: Path, jobs: Sequence[Job], *, enabled: bool, position: int) -> Iterator[None]:
    """A bar of the finished jobs of all ranks (their metrics.json files, polled every second)."""
    stop = threading.Event()

    def count() -> int:
        return sum((out / job.name / METRICS_FILE).exists() for job in jobs)

    with tqdm(total=len(jobs), desc="all ranks", unit="job", position=position, disable=not enabled) as bar:

        def poll() -> None:
            while not stop.wait(1.0):
                bar.update(count() - bar.n)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            bar.update(count() - bar.n)


# ---- the batch ----


def summarise(
    job_file: JobFile,
    metrics: Sequence[dict[str, Any]],
    failed: dict[str, str],
    world_size: int,
    seconds: float,
) -> dict[str, Any]:
    """summary.json: every job's final loss and accuracy, each config's accuracy pooled over its
    restarts × test models, the failed jobs and how the batch ran."""
    by_name = {m["job"]: m for m in metrics}
    configs = {}
    for config in job_file.configs:
        done = [by_name[job.name] for job in job_file.jobs if job.config is config and job.name in by_name]
        if done:
            pooled = {
                s: {a: [v for m in done for v in m["accuracies"][s][a]] for a in done[0]["accuracies"][s]}
                for s in done[0]["accuracies"]
            }
            configs[config.name] = {"jobs": [m["job"] for m in done], "accuracy": summarize_table(pooled)}
    jobs = {
        job.name: {key: by_name[job.name][key] for key in ("seed", "final_loss", "accuracy")}
        for job in job_file.jobs
        if job.name in by_name
    }
    return {
        "job_file": str(job_file.path),
        "world_size": world_size,
        "data_parallel": job_file.data_parallel,
        "seconds": seconds,
        "configs": configs,
        "jobs": jobs,
        "failed": failed,
    }


def _tables(first: str, entries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown tables of {name: {strategy: {test arch: summary}}}, one per set of test archs."""
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for name, by_strategy in entries.items():
        archs = tuple(next(iter(by_strategy.values())))
        groups.setdefault(archs, []).extend(strategy_table(by_strategy, [name]))
    return [markdown_table([first, "strategy", *archs], rows) for archs, rows in groups.items()]


def render_summary(summary: dict[str, Any]) -> str:
    """summary.md: accuracy per config (pooled over restarts) and per job, and the failures."""
    mode = "data parallel" if summary["data_parallel"] else "jobs sharded"
    parts = [
        "# memdistill batch",
        f"Job file `{summary['job_file']}`; {len(summary['jobs'])} jobs finished on {summary['world_size']} "
        f"rank(s), {mode}, in {summary['seconds']:.0f} s.",
        "Cells: test accuracy, mean ± std over the fresh test models (and restarts, per config).",
        "## Configs",
        *_tables("config", {name: c["accuracy"] for name, c in summary["configs"].items()}),
        "## Jobs",
        *_tables("job", {name: j["accuracy"] for name, j in summary["jobs"].items()}),
    ]
    if summary["failed"]:
        parts += ["## Failed", "\n".join(f"- `{job}`: {error}" for job, error in summary["failed"].items())]
    return "\n\n".join(parts) + "\n"


def shard(job_file: JobFile, out: Path, datasets: dict, rank: int, world: int) -> tuple[list[int], list[str]]:
    """The indices of the runs this rank takes part in, and every run's :func:`run_status`
    (rank 0's in data-parallel mode, where all ranks must take the same steps)."""
    units = runs(job_file)
    statuses = [run_status(run, out) for run in units]
    if job_file.data_parallel:
        return list(range(len(units))), all_ranks(statuses)[0]
    costs = [run_cost(run, len(datasets[data_key(run.config)].x_train)) for run in units]
    return assign(costs, world)[rank], statuses


def write_summary(job_file: JobFile, out: Path, gathered: list, world: int, seconds: float) -> dict[str, Any]:
    """summary.json and summary.md from every rank's (metrics, failed jobs); returns the summary."""
    metrics = [m for ms, _ in gathered for m in ms]
    failed = {job: error for _, fs in gathered for job, error in fs.items()}
    summary = summarise(job_file, metrics, failed, world, seconds)
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", render_summary(summary))
    return summary


def run_batch(
    job_file: JobFile | str | Path, out: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any] | None:
    """Run every job of a job file and write their folders and the summary under ``out``.

    Call it in every process of a torch.distributed group (or in one process): the runs are
    sharded over the ranks, or every run is shared by all of them with ``data_parallel``.

    Args:
      job_file: a :class:`memdistill.apps.jobfile.JobFile` or the path of a TOML job file.
      out: the output folder.
      resume: continue a killed batch in ``out``: finished jobs are skipped, the others
        continue from their checkpoints.
      progress: tqdm bars: each rank's jobs (desc ``rank k``), all ranks' jobs on rank 0.

    Returns:
      The summary (as in summary.json) on rank 0; None on the other ranks.

    Raises:
      ValueError: an invalid job file, or ``out`` holding results that can not be used,
        before any work starts (on every rank).
    """
    start, out = time.perf_counter(), Path(out)
    job_file = job_file if isinstance(job_file, JobFile) else read(job_file)
    rank, world = rank_and_world()
    datasets = load_datasets(job_file)
    problems = sorted({p for ps in all_ranks(folder_problems(job_file.jobs, out, resume)) for p in ps})
    if problems:
        raise ValueError("\n".join(problems))
    units, (mine, statuses) = runs(job_file), shard(job_file, out, datasets, rank, world)
    writer = rank == 0 or not job_file.data_parallel
    metrics, failed = [], {}
    with (
        overall_bar(out, job_file.jobs, enabled=progress and rank == 0 and world > 1, position=0),
        tqdm(
            total=sum(units[i].count for i in mine),
            desc=f"rank {rank}" if world > 1 else "batch",
            unit="job",
            position=rank + (world > 1),
            disable=not progress or not writer,
        ) as bar,
    ):
        for i in mine:
            run = units[i]
            bar.set_postfix_str(run.jobs[0].name + ("" if run.count == 1 else f"…r{run.jobs[-1].restart}"))
            try:
                metrics += execute(
                    run,
                    statuses[i],
                    datasets[data_key(run.config)],
                    out,
                    resume=resume,
                    data_parallel=job_file.data_parallel,
                    writer=writer,
                    progress=progress and world == 1,
                )
            except FloatingPointError as error:
                failed.update({job.name: str(error) for job in run.jobs})
            bar.update(run.count)
    gathered = all_ranks((metrics, failed))
    return write_summary(job_file, out, gathered, world, time.perf_counter() - start) if rank == 0 else None
