"""Job files of ``memdistill batch``: TOML text → validated configs → concrete jobs and runs.

A job file holds an optional ``data_parallel`` switch, ``[defaults]`` (any job key but name, for
every job), ``[evaluate]`` (how every result is tested) and one ``[[jobs]]`` table per config,
each with optional ``[jobs.evaluate]`` overrides. A config with R restarts expands into R jobs
``<name>-r0 … <name>-r{R−1}`` (restart r uses seed ``seed + r``). The keys, their types, defaults
and meanings are the fields of the pydantic models below (:func:`schema_table`, in README.md).
:func:`parse` reports every problem of the file at once, each naming its key path
(``job.toml: jobs[2].method: unknown method 'adjiont'; expected one of [...]``), before any work
starts. Relative CSV paths are read relative to the job file's folder.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_core import ErrorDetails

from memdistill.apps.reproduce import Protocol
from memdistill.data import BUNDLED, SYNTHETIC
from memdistill.distill.training import STRATEGIES
from memdistill.engine.validation import METHODS
from memdistill.models import mlp

DTYPES = ("float32", "float64")
PAPER = Protocol()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

# ---- checks of single values: each returns the problem, or None when the value is fine ----


def _check_arch(value: str) -> str | None:
    try:
        mlp(value)
    except ValueError as error:
        return str(error).removeprefix("mlp: ")
    return None


def _check_data(value: str) -> str | None:
    if value in SYNTHETIC + BUNDLED or value.endswith(".csv"):
        return None
    return f"unknown data set {value!r}; expected one of {list(SYNTHETIC + BUNDLED)} or the path of a .csv file"


def _check_name(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return f"must be a folder name of letters, digits and . _ + - (starting with a letter or digit), got {value!r}"


def _checked(kind: Any, check: Callable[[Any], str | None]) -> Any:
    """The type ``kind`` whose values pass ``check`` (else pydantic's ValueError of the problem)."""

    def validate(value: Any) -> Any:
        if problem := check(value):
            raise ValueError(problem)
        return value

    return Annotated[kind, AfterValidator(validate)]


def _one_of(what: str, choices: tuple[str, ...]) -> Any:
    return _checked(str, lambda v: None if v in choices else f"unknown {what} {v!r}; expected one of {list(choices)}")


def _list(item: Any) -> Any:
    """A non-empty TOML list of ``item`` values, kept as a tuple."""
    return Annotated[tuple[item, ...], Field(min_length=1, strict=False)]


Count, Seed = Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]
Rate = _checked(float, lambda v: None if math.isfinite(v) and v > 0 else f"must be positive and finite, got {v}")
Momentum = _checked(float, lambda v: None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}")
Archs = _list(_checked(str, _check_arch))
DataSet, Name = _checked(str, _check_data), _checked(str, _check_name)
Method, Dtype, Strategies = _one_of("method", METHODS), _one_of("dtype", DTYPES), _list(_one_of("strategy", STRATEGIES))


class _Table(BaseModel):
    """A TOML table: unknown keys, and values of another type, are errors (an int is a number, a bool no int)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Evaluation(_Table):
    """``[evaluate]`` (and a job's ``[jobs.evaluate]`` overrides): how each distilled set is tested."""

    test_archs: Archs = Field(PAPER.archs, description="architectures of the fresh test models")
    strategies: Strategies = Field(STRATEGIES, description="their training strategies (memdistill.distill.training)")
    inits: Count = Field(PAPER.eval_inits, description="fresh models per strategy and architecture")
    total_epochs: Count = Field(PAPER.total_epochs, description="epochs each test model trains")
    seed: Seed = Field(0, description="seed of the first test model (the next: seed + 1, …)")
    figures: bool = Field(True, description="also draw the job's PNG figures (about 1.5 s per job)")


class Settings(_Table):
    """The keys of ``[defaults]`` and of every ``[[jobs]]`` table: Distiller and fit arguments, restarts."""

    data: DataSet = Field(PAPER.data, description="a data set (`moons`, `iris`, …) or a .csv file's path (relative)")
    label: str | None = Field(None, description="the label column of CSV data (required with it)")
    archs: Archs = Field(("2-layer",), description="the internal models, each `N-layer` or `mlp[w1,w2,…]`")
    models: Count | None = Field(None, description="copies of a single arch (default 3); several archs: one each")
    steps: Count = Field(PAPER.steps, description="s, synthetic batches (inner steps) per internal epoch")
    epochs: Count = Field(PAPER.epochs, description="e, internal epochs: the inner loop runs s·e steps")
    per_class: Count = Field(PAPER.per_class, description="synthetic objects of each class per step")
    method: Method = Field(PAPER.method, description=f"hypergradient method: {', '.join(METHODS)}")
    momentum: Momentum = Field(PAPER.momentum, description="γ of the inner SGD, in [0, 1); `reversible` needs γ > 0")
    snapshots: Count | None = Field(None, description="stored states of `checkpoint` (default √(s·e) segments)")
    init_lr: Rate = Field(PAPER.init_lr, description="initial value of every learned learning rate, > 0")
    outer_lr: Rate = Field(PAPER.outer_lr, description="Adam's learning rate in the outer loop, > 0")
    outer_epochs: Count = Field(PAPER.outer_epochs, description="passes over the real data")
    batch_size: Count = Field(PAPER.batch_size, description="real objects per outer step")
    soft_labels: bool = Field(False, description="also learn soft labels")
    dtype: Dtype = Field("float32", description=" or ".join(DTYPES))
    seed: Seed = Field(PAPER.seed, description="Distiller seed of restart 0; restart r uses seed + r")
    restarts: Count = Field(1, description="R, independent distillations: the jobs `<name>-r0` … `<name>-r{R−1}`")
    batch_restarts: Count | None = Field(None, description="restarts batched in one Distiller (default all)")
    save_every: Count = Field(50, description="outer steps between checkpoints of the outer loop")


class _Named(_Table):
    name: Name = Field("", description="folder of its results; default `<data>-<arch>+<arch>…`, e.g. `moons-2-layer`")


class Config(Settings, _Named):  # fields in this order: name, the settings, evaluate
    """One ``[[jobs]]`` table merged over ``[defaults]``; ``index``: its position in the file."""

    evaluate: Evaluation = Field(default_factory=Evaluation, description="this job's overrides of the `evaluate.` keys")
    _index: int = PrivateAttr(0)

    @property
    def index(self) -> int:
        """The position of the job's table in the file: ``jobs[index]``."""
        return self._index

    @property
    def internal_archs(self) -> tuple[str, ...]:
        """The m internal models' architecture names."""
        return self.archs * (self.models or 3) if len(self.archs) == 1 else self.archs

    def record(self) -> dict[str, Any]:
        """The settings that make the results, as JSON values (recorded in metrics.json and
        compared on resume; the file position and the checkpoint interval are left out)."""
        return json_values(self.model_dump(exclude={"save_every"}))


class Document(_Table):
    """The top level of a job file: the switch and the tables."""

    data_parallel: bool = Field(False, description="each distillation on all ranks, its models split (else sharded)")
    defaults: dict[str, Any] = Field({}, description="any `jobs.` key but `name` and `evaluate`, for every job")
    evaluate: dict[str, Any] = Field({}, description="how every job is tested: the `evaluate.` keys")
    jobs: list[Any] = Field(min_length=1, description="one `[[jobs]]` table per config: the `jobs.` keys")


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
        sizes = [(c, min(c.batch_restarts or c.restarts, c.restarts)) for c in self.configs]
        return [Run(c, first, min(n, c.restarts - first)) for c, n in sizes for first in range(0, c.restarts, n)]


def json_values(value: Any) -> Any:
    """``value`` with tuples as lists and Paths as strings (how it reads back from JSON)."""
    if isinstance(value, dict):
        return {key: json_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_values(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# ---- validation: pydantic's errors in the job file's words, every problem at once ----

_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a non-empty list of strings",
             "too_short": "a non-empty list of strings", "model_type": "a table", "dict_type": "a table"}  # fmt: skip


def _problem(error: ErrorDetails, model: type[BaseModel]) -> str:
    """pydantic's ``error`` of ``model`` in the words of the job file."""
    kind, loc, value = error["type"], error["loc"], error["input"]
    if kind == "extra_forbidden":
        for key in loc[:-1]:  # down to the table holding the key
            model = model.model_fields[key].annotation if isinstance(key, str) else model
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; expected one of {list(model.model_fields)}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "greater_than_equal":
        return f"must be >= {error['ctx']['ge']}, got {value}"
    shown = repr(value) if isinstance(value, (list, dict)) else f"{value!r} ({type(value).__name__})"
    return f"expected {_EXPECTED[kind]}, got {shown}" if kind in _EXPECTED else error["msg"]


def _messages(error: ValidationError, model: type[BaseModel], where: tuple = ()) -> list[str]:
    """The errors of ``model`` (the table at key path ``where``) as ``"<key path>: <problem>"``, the
    location ``("jobs", 2, "method")`` as ``"jobs[2].method"``."""
    lines, errors = [], error.errors()
    for e in errors:
        if e["type"] == "too_short" and any(o["loc"][: len(e["loc"])] == e["loc"] and o is not e for o in errors):
            continue  # a list of invalid items only: the items' problems say it
        loc = (*where, *e["loc"])
        problem = "expected a non-empty list of [[jobs]] tables" if loc == ("jobs",) else _problem(e, model)
        lines.append("".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") + f": {problem}")
    return lines


def _valid(model: type[BaseModel], data: Any, where: tuple, problems: list[str], base: dict | None = None) -> Any:
    """``data`` merged over ``base`` as a ``model``; if some keys are invalid, their problems are
    appended to ``problems`` and the model is made of the others (None if ``data`` is no table)."""
    base = base or {}
    try:
        return model.model_validate({**base, **data} if isinstance(data, dict) else data)
    except ValidationError as error:
        problems += _messages(error, model, where)
        bad = {e["loc"][0] for e in error.errors() if e["loc"]}
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate({**base, **{key: v for key, v in data.items() if key not in bad}})
    except ValidationError:  # a required key is invalid
        return None


def _cross_problems(config: Config, folder: Path) -> list[str]:
    """Problems between keys of one job: models vs archs, reversible without momentum, CSV."""
    problems, archs, csv = [], config.archs, config.data.endswith(".csv")
    if len(archs) > 1 and config.models not in (None, len(archs)):
        problems.append(f"models: {config.models} does not match the {len(archs)} archs (one model each); "
                        f"leave it out or set it to {len(archs)}")  # fmt: skip
    if config.method == "reversible" and config.momentum == 0.0:
        problems.append(f"momentum: method 'reversible' needs momentum > 0, got {config.momentum}")
    if csv and not (folder / config.data).is_file():
        problems.append(f"data: no CSV file at {str(folder / config.data)!r}")
    if csv and config.label is None:
        problems.append(f"label: required with the CSV data {config.data!r} (the label column)")
    return problems


def _config(entry: Any, index: int, base: dict, folder: Path, problems: list[str]) -> Config | None:
    """``jobs[index]`` over ``base`` (the valid [defaults] and [evaluate]), or None and its problems."""
    if isinstance(entry, dict) and isinstance(entry.get("evaluate", {}), dict):
        entry = {**entry, "evaluate": {**base["evaluate"], **entry.get("evaluate", {})}}
    count, config = len(problems), _valid(Config, entry, ("jobs", index), problems, base)
    if config is not None:
        problems += [f"jobs[{index}].{problem}" for problem in _cross_problems(config, folder)]
    if config is None or len(problems) > count:
        return None
    name = config.name or f"{Path(config.data).stem}-" + "+".join(dict.fromkeys(config.archs))
    if problem := _check_name(name):
        problems.append(f"jobs[{index}].name: the name made from data and archs, {problem}; give the job a name")
        return None
    data = str((folder / config.data).resolve()) if config.data.endswith(".csv") else config.data
    config = config.model_copy(update={"name": name, "data": data})
    config._index = index
    return config


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
    problems: list[str] = []
    _valid(Document, document, (), problems)
    table = {key: value if isinstance(value := document.get(key), dict) else {} for key in ("defaults", "evaluate")}
    base = _valid(Settings, table["defaults"], ("defaults",), problems).model_dump(exclude_unset=True)
    base["evaluate"] = _valid(Evaluation, table["evaluate"], ("evaluate",), problems).model_dump(exclude_unset=True)
    entries = document["jobs"] if isinstance(document.get("jobs"), list) else []
    configs = [c for i, entry in enumerate(entries) if (c := _config(entry, i, base, path.parent, problems))]
    first: dict[str, int] = {}
    for c in configs:
        if first.setdefault(c.name, c.index) != c.index:
            problems.append(f"jobs[{c.index}].name: {c.name!r} is already the name of jobs[{first[c.name]}]; "
                            "give each job a distinct name")  # fmt: skip
    if problems:
        raise ValueError("\n".join(f"{path.name}: {problem}" for problem in problems))
    return JobFile(path, tuple(configs), document.get("data_parallel", False))


def read(path: str | Path) -> JobFile:
    """:func:`parse` the job file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"batch: no job file at {str(path)!r}")
    return parse(path.read_text(encoding="utf-8"), path)


def _toml_type(field: dict) -> str:
    """The TOML type of a JSON-schema property, e.g. ``"integer ≥ 1"``, ``"list of strings"``."""
    field = next(f for f in field.get("anyOf", [field]) if f.get("type") != "null")
    kind = field.get("type", "object")
    if kind == "array":
        kind = "list of strings" if field.get("items", {}).get("type") == "string" else "list of tables"
    return kind.replace("object", "table") + (f" ≥ {field['minimum']}" if "minimum" in field else "")


def schema_table() -> str:
    """The job-file keys as a markdown table (key, type, default, description), made from the models."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for prefix, model in (("", Document), ("jobs.", Config), ("evaluate.", Evaluation)):
        schema = model.model_json_schema()
        for key, field in schema["properties"].items():
            default = field.get("default")
            shown = "—" if default in (None, "") else f"`{json.dumps(default, ensure_ascii=False)}`"
            shown = "required" if key in schema.get("required", ()) else shown
            rows.append(f"| `{prefix}{key}` | {_toml_type(field)} | {shown} | {field['description']} |")
    return "\n".join(rows) + "\n"
