"""Job files of ``memdistill batch``: TOML text → validated configs → concrete jobs and runs.

A job file (read with :mod:`tomllib`) lists distillation configs; each config with R
restarts expands into R jobs ``<name>-r0 … <name>-r{R−1}`` (restart r uses seed ``seed + r``)::

    data_parallel = false            # true: every distillation runs on all ranks, its
                                     # internal models split across them (Distiller data_parallel)
    [defaults]                       # optional: any job key (but name), for every job
    outer_epochs = 5
    [evaluate]                       # optional: how every result is tested
    test_archs = ["1-layer", "2-layer", "4-layer"]
    strategies = ["none", "s1", "s2", "s3"]
    inits = 5
    figures = true                   # PNG figures of every job
    [[jobs]]                         # one table per config
    name = "moons-2layer"            # default: "<data>-<arch>+<arch>…", e.g. "moons-2-layer"
    data = "moons"
    archs = ["2-layer"]
    models = 3
    restarts = 4
    [jobs.evaluate]                  # optional: overrides of [evaluate] for this config
    inits = 10

The keys, types and defaults are :class:`Config` and :class:`Evaluation`. :func:`parse`
reports every problem of the file at once, each naming its key path
(``job.toml: jobs[2].method: unknown method 'adjiont'; expected one of [...]``), before any
work starts. Relative CSV paths are read relative to the job file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from memdistill.apps.reproduce import Protocol
from memdistill.data import BUNDLED, SYNTHETIC
from memdistill.distill.training import STRATEGIES
from memdistill.engine.validation import METHODS
from memdistill.models import mlp

DTYPES = ("float32", "float64")
PAPER = Protocol()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Evaluation:
    """How each distilled set is tested: ``inits`` fresh models (seeds ``seed``, ``seed + 1``, …)
    of every test architecture, trained with every strategy (see :mod:`memdistill.distill.training`);
    ``figures``: also draw the job's PNG figures (about 1.5 s per job)."""

    test_archs: tuple[str, ...] = PAPER.archs
    strategies: tuple[str, ...] = STRATEGIES
    inits: int = PAPER.eval_inits
    total_epochs: int = PAPER.total_epochs
    seed: int = 0
    figures: bool = True


@dataclass(frozen=True)
class Config:
    """One ``[[jobs]]`` table: a distillation config (the :class:`memdistill.Distiller` and
    ``fit`` arguments), its restarts and its evaluation.

    ``models`` copies of a single arch (3 by default), or one model per arch when several are
    given. ``batch_restarts`` restarts (default: all) run batched in one Distiller; the
    grouping depends on the file only, so results do not depend on the number of ranks.
    ``save_every``: outer steps between checkpoints of the outer loop.
    """

    name: str
    index: int
    data: str = PAPER.data
    label: str | None = None
    archs: tuple[str, ...] = ("2-layer",)
    models: int | None = None
    steps: int = PAPER.steps
    epochs: int = PAPER.epochs
    per_class: int = PAPER.per_class
    method: str = PAPER.method
    momentum: float = PAPER.momentum
    snapshots: int | None = None
    init_lr: float = PAPER.init_lr
    outer_lr: float = PAPER.outer_lr
    outer_epochs: int = PAPER.outer_epochs
    batch_size: int = PAPER.batch_size
    soft_labels: bool = False
    dtype: str = "float32"
    seed: int = PAPER.seed
    restarts: int = 1
    batch_restarts: int | None = None
    save_every: int = 50
    evaluate: Evaluation = Evaluation()

    @property
    def internal_archs(self) -> tuple[str, ...]:
        """The m internal models' architecture names."""
        return self.archs * (self.models or 3) if len(self.archs) == 1 else self.archs

    def record(self) -> dict[str, Any]:
        """The settings that make the results, as JSON values (recorded in metrics.json and
        compared on resume; the file position and the checkpoint interval are left out)."""
        record = json_values(dataclasses.asdict(self))
        del record["index"], record["save_every"]
        return record


@dataclass(frozen=True)
class Job:
    """One distillation: restart ``restart`` of ``config``; it writes ``OUT/<name>/``."""

    config: Config
    restart: int

    @property
    def name(self) -> str:
        """``"<config name>-r<restart>"``, e.g. ``"moons-2-layer-r0"``."""
        return f"{self.config.name}-r{self.restart}"

    @property
    def seed(self) -> int:
        """The Distiller seed of this restart: ``config.seed + restart``."""
        return self.config.seed + self.restart


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


@dataclass(frozen=True)
class JobFile:
    """A validated job file: its path, its configs and the data-parallel switch."""

    path: Path
    configs: tuple[Config, ...]
    data_parallel: bool = False

    @property
    def jobs(self) -> list[Job]:
        """Every job, in file order then restart order."""
        return [job for run in self.runs for job in run.jobs]

    @property
    def runs(self) -> list[Run]:
        """The units of work: each config's restarts in groups of ``batch_restarts``."""
        runs = []
        for config in self.configs:
            group = min(config.batch_restarts or config.restarts, config.restarts)
            for first in range(0, config.restarts, group):
                runs.append(Run(config, first, min(group, config.restarts - first)))
        return runs


def json_values(value: Any) -> Any:
    """``value`` with tuples as lists and Paths as strings (how it reads back from JSON)."""
    if isinstance(value, dict):
        return {key: json_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_values(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# ---- checks of single values: each returns the problem, or None when the value is fine ----


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be >= {low}, got {value}"


def _positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be positive and finite, got {value}"


def _momentum(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value}"


def _one_of(what: str, choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: (
        None if value in choices else f"unknown {what} {value!r}; expected one of {list(choices)}"
    )


def _arch(value: str) -> str | None:
    try:
        mlp(value)
    except ValueError as error:
        return str(error).removeprefix("mlp: ")
    return None


def _data(value: str) -> str | None:
    if value in SYNTHETIC + BUNDLED or value.endswith(".csv"):
        return None
    return (
        f"unknown data set {value!r}; expected one of {list(SYNTHETIC + BUNDLED)} or the path of a .csv file"
    )


def _name(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return f"must be a folder name of letters, digits and . _ + - (starting with a letter or digit), got {value!r}"


@dataclass(frozen=True)
class Key:
    """A job-file key: its TOML type (``list``: a list of strings) and a check of each value."""

    kind: type
    check: Callable[[Any], str | None] | None = None


JOB_KEYS = {
    "name": Key(str, _name),
    "data": Key(str, _data),
    "label": Key(str),
    "archs": Key(list, _arch),
    "models": Key(int, _at_least(1)),
    "steps": Key(int, _at_least(1)),
    "epochs": Key(int, _at_least(1)),
    "per_class": Key(int, _at_least(1)),
    "method": Key(str, _one_of("method", METHODS)),
    "momentum": Key(float, _momentum),
    "snapshots": Key(int, _at_least(1)),
    "init_lr": Key(float, _positive),
    "outer_lr": Key(float, _positive),
    "outer_epochs": Key(int, _at_least(1)),
    "batch_size": Key(int, _at_least(1)),
    "soft_labels": Key(bool),
    "dtype": Key(str, _one_of("dtype", DTYPES)),
    "seed": Key(int, _at_least(0)),
    "restarts": Key(int, _at_least(1)),
    "batch_restarts": Key(int, _at_least(1)),
    "save_every": Key(int, _at_least(1)),
}
"""Keys of a ``[[jobs]]`` table (and of ``[defaults]``, but name) besides ``evaluate``."""

EVALUATE_KEYS = {
    "test_archs": Key(list, _arch),
    "strategies": Key(list, _one_of("strategy", STRATEGIES)),
    "inits": Key(int, _at_least(1)),
    "total_epochs": Key(int, _at_least(1)),
    "seed": Key(int, _at_least(0)),
    "figures": Key(bool),
}
"""Keys of an ``[evaluate]`` / ``[jobs.evaluate]`` table."""

TOP_KEYS = ("jobs", "defaults", "evaluate", "data_parallel")

_TOML_TYPES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list of strings",
}


def _unknown(path: str, key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{path}{key}: unknown key{hint}; expected one of {list(known)}"


def _kind_problem(kind: type, value: Any) -> str | None:
    """Why ``value`` is not of the TOML type ``kind`` (an int is a number, a bool is no int)."""
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value),
    }[kind]
    if ok:
        return None
    shown = f"{value!r} ({type(value).__name__})" if not isinstance(value, list) else repr(value)
    expected = _TOML_TYPES[kind] if kind is not list else "a non-empty list of strings"
    return f"expected {expected}, got {shown}"


def check_table(table: Any, keys: dict[str, Key], path: str) -> tuple[dict[str, Any], list[str]]:
    """The valid values of a TOML table of ``keys`` (floats as float, lists as tuples) and
    the problems of the others, each ``"<path><key>: <problem>"``."""
    if not isinstance(table, dict):
        return {}, [f"{path.rstrip('.')}: expected a table, got {table!r}"]
    values, problems = {}, []
    for key, value in table.items():
        if key not in keys:
            problems.append(_unknown(path, key, keys))
            continue
        spec = keys[key]
        problem = _kind_problem(spec.kind, value)
        if problem is None and spec.check is not None:
            items = enumerate(value) if spec.kind is list else [(None, value)]
            for i, item in items:
                issue = spec.check(item)
                if issue:
                    problems.append(f"{path}{key}{'' if i is None else f'[{i}]'}: {issue}")
        elif problem:
            problems.append(f"{path}{key}: {problem}")
        if problem is None:
            values[key] = tuple(value) if spec.kind is list else float(value) if spec.kind is float else value
    return values, problems


def _default_name(values: dict[str, Any]) -> str:
    """``"<data>-<arch>+<arch>…"`` (a CSV file's stem as the data), e.g. ``"moons-2-layer"``."""
    data = Path(values.get("data", Config.data)).stem
    return f"{data}-" + "+".join(dict.fromkeys(values.get("archs", Config.archs)))


def _cross_problems(values: dict[str, Any], base: Path, path: str) -> list[str]:
    """Problems between keys of one job: models vs archs, reversible without momentum, CSV."""
    problems = []
    archs, models = values.get("archs", ()), values.get("models")
    if len(archs) > 1 and models not in (None, len(archs)):
        problems.append(
            f"{path}models: {models} does not match the {len(archs)} archs (one model each); "
            f"leave it out or set it to {len(archs)}"
        )
    if values.get("method") == "reversible" and values.get("momentum", 0.0) == 0.0:
        problems.append(
            f"{path}momentum: method 'reversible' needs momentum > 0, got {values.get('momentum', 0.0)}"
        )
    data = values.get("data", "")
    if data.endswith(".csv"):
        if not (base / data).is_file():
            problems.append(f"{path}data: no CSV file at {str(base / data)!r}")
        if "label" not in values:
            problems.append(f"{path}label: required with the CSV data {data!r} (the label column)")
    return problems


def _config(
    entry: Any, index: int, defaults: dict, evaluate: dict, base: Path
) -> tuple[Config | None, list[str]]:
    """One ``jobs[index]`` table merged over the defaults, or its problems."""
    path = f"jobs[{index}]."
    table = dict(entry) if isinstance(entry, dict) else entry
    own_evaluate = table.pop("evaluate", {}) if isinstance(table, dict) else {}
    values, problems = check_table(table, JOB_KEYS, path)
    eval_values, eval_problems = check_table(own_evaluate, EVALUATE_KEYS, f"{path}evaluate.")
    merged = {**defaults, **values}
    problems += eval_problems + _cross_problems(merged, base, path)
    if problems:
        return None, problems
    if merged.get("data", "").endswith(".csv"):
        merged["data"] = str((base / merged["data"]).resolve())
    name = merged.pop("name", None) or _default_name(merged)
    if _name(name):
        return None, [f"{path}name: the name made from data and archs, {_name(name)}; give the job a name"]
    return Config(name, index, **merged, evaluate=Evaluation(**{**evaluate, **eval_values})), []


def _duplicate_names(configs: list[Config]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for config in configs:
        if config.name in first:
            problems.append(
                f"jobs[{config.index}].name: {config.name!r} is already the name of jobs[{first[config.name]}]; "
                "give each job a distinct name"
            )
        first.setdefault(config.name, config.index)
    return problems


def parse(text: str, path: str | Path = "job.toml") -> JobFile:
    """Validate the TOML ``text`` of the job file at ``path`` and build its :class:`JobFile`.

    Raises:
      ValueError: one line per problem, ``"<file>: <key path>: <problem>"``.
    """
    path = Path(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path.name}: not valid TOML: {error}") from None
    problems = [_unknown("", key, TOP_KEYS) for key in document if key not in TOP_KEYS]
    data_parallel = document.get("data_parallel", False)
    if not isinstance(data_parallel, bool):
        problems.append(f"data_parallel: {_kind_problem(bool, data_parallel)}")
    default_keys = {key: spec for key, spec in JOB_KEYS.items() if key != "name"}
    defaults, default_problems = check_table(document.get("defaults", {}), default_keys, "defaults.")
    evaluate, evaluate_problems = check_table(document.get("evaluate", {}), EVALUATE_KEYS, "evaluate.")
    problems += default_problems + evaluate_problems
    entries = document.get("jobs")
    if not isinstance(entries, list) or not entries:
        problems.append("jobs: expected a non-empty list of [[jobs]] tables")
        entries = []
    configs = []
    for index, entry in enumerate(entries):
        config, config_problems = _config(entry, index, defaults, evaluate, path.parent)
        problems += config_problems
        configs += [config] if config else []
    problems += _duplicate_names(configs)
    if problems:
        raise ValueError("\n".join(f"{path.name}: {problem}" for problem in problems))
    return JobFile(path, tuple(configs), data_parallel)


def read(path: str | Path) -> JobFile:
    """:func:`parse` the job file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"batch: no job file at {str(path)!r}")
    return parse(path.read_text(encoding="utf-8"), path)
