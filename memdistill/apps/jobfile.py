"""Job files of ``memdistill batch``: TOML text → validated configs → jobs.

A job file holds an optional ``data_parallel`` switch, ``[defaults]`` (any job key but ``name``, for every
job), ``[evaluate]`` (how every result is tested) and one ``[[jobs]]`` table per config, each with optional
``[jobs.evaluate]`` overrides. A config with R restarts is the jobs ``<name>-r0 … <name>-r{R−1}`` (restart r
uses seed ``seed + r``). The keys are the fields of the pydantic models below (:func:`schema_table`, in
README.md). :func:`parse` reports every problem at once, each at its key path (``job.toml: jobs[2].method:
expected one of …, got 'adjiont'``), before any work. Relative data paths are read from the file's folder.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import tomllib
from pydantic import AfterValidator, BaseModel, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from memdistill.apps.reproduce import Protocol
from memdistill.data import BUNDLED, IMAGES, SYNTHETIC, is_image_data
from memdistill.distill.defaults import IMAGE
from memdistill.distill.outer import INITS, OUTER_LR_SCHEDULES, THETA0
from memdistill.distill.training import STRATEGIES
from memdistill.engine.planner import parse_memory
from memdistill.engine.validation import METHODS
from memdistill.models import resolve_arch

DTYPES, NAMED, FILES, PAPER = ("float32", "float64"), SYNTHETIC + BUNDLED + IMAGES, (".csv", ".npz"), Protocol()
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
NAME_RULE = "must be a folder name of letters, digits and . _ + - (starting with a letter or digit), got {!r}"
PROBE = (3, 1 << 15, 1 << 15)  # an input shape any valid arch name builds for: parsing checks the names only
IMAGE_DEFAULTS = {"archs": (IMAGE.arch,), "models": IMAGE.models, **IMAGE.distiller(), **IMAGE.fit()}
"""What a job on image data takes for the keys it leaves out: ``memdistill distill``'s image defaults."""


def _check(value: str, info: ValidationInfo) -> str:
    """A ``name``, ``device``, ``data`` (a data set, or a .csv/.npz file or image folder) or arch name."""
    problem, key = None, info.field_name
    if key == "name" and not FOLDER_NAME.fullmatch(value):
        problem = NAME_RULE.format(value)
    elif key == "device" and not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
        problem = f"expected 'cpu', 'cuda' or 'cuda:N', got {value!r}"
    elif key == "data" and value not in NAMED and not value.lower().endswith(FILES):
        if not (info.context["folder"] / value).is_dir():  # relative paths start at the job file's folder
            problem = f"unknown data set {value!r}; expected one of {list(NAMED)}, a .csv/.npz file or an image folder"
    elif key in ("archs", "test_archs"):  # the batch builds each arch on its data before any work
        try:
            resolve_arch(value, PROBE, 10)  # imports an import string
        except ValueError as error:  # what a built-in's builder says is wrong with the name, or the import error
            problem = str(error.__cause__ if error.__cause__ and ":" not in value else error)
    if problem:
        raise ValueError(problem.removeprefix("resolve_arch: "))
    return value


def _memory(value: str | int) -> str | int:
    """A ``memory`` budget as :func:`memdistill.engine.planner.parse_memory` reads it, kept as written."""
    parse_memory(value, "")
    return value


Checked, Count, Seed = Annotated[str, AfterValidator(_check)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]
Memory = Annotated[str | int, AfterValidator(_memory)]
Archs = Annotated[tuple[Checked, ...], Field(min_length=1, strict=False)]
Strategies = Annotated[tuple[Literal[STRATEGIES], ...], Field(min_length=1, strict=False)]
Rate, Momentum = Annotated[float, Field(gt=0, allow_inf_nan=False)], Annotated[float, Field(ge=0, lt=1)]


class _Table(BaseModel):
    """A TOML table: unknown keys, and values of another type, are errors (an int is a number, a bool no int)."""

    model_config = {"extra": "forbid", "frozen": True, "strict": True}


class Evaluation(_Table):
    """``[evaluate]`` (and a job's ``[jobs.evaluate]`` overrides): how each distilled set is tested."""

    test_archs: Archs | None = Field(None, description="the fresh test models' archs; default: the paper's MLPs "
                                     f"{', '.join(PAPER.archs)} (tabular), the job's `archs` (images)")  # fmt: skip
    strategies: Strategies = Field(STRATEGIES, description="their training strategies (memdistill.distill.training)")
    inits: Count = Field(PAPER.eval_inits, description="fresh models per strategy and architecture")
    total_epochs: Count = Field(PAPER.total_epochs, description="epochs each test model trains")
    seed: Seed = Field(0, description="seed of the first test model (the next: seed + 1, …)")
    figures: bool = Field(True, description="also draw the job's PNGs (images: grid.png; about 1.5 s a job)")


class Settings(_Table):
    """The keys of ``[defaults]`` and of every ``[[jobs]]`` table: Distiller and fit arguments, restarts."""

    data: Checked = Field(PAPER.data, description="a data set (`moons`, `mnist`, …), .csv/.npz file or image folder")
    data_root: str | None = Field(None, description="folder of mnist/cifar files (relative; default $MEMDISTILL_DATA)")
    label: str | None = Field(None, description="the label column of CSV data (required with it)")
    archs: Archs = Field(("2-layer",), description="internal models: `N-layer`, `mlp[w1,…]`, `lenet`, `convnet[-D]`, "
                         "`convnet[depth=D,width=W,norm=N]` or `package.module:function`")  # fmt: skip
    models: Count | None = Field(None, description="copies of a single arch (default 3); several archs: one each")
    steps: Count = Field(PAPER.steps, description="s, synthetic batches (inner steps) per internal epoch")
    epochs: Count = Field(PAPER.epochs, description="e, internal epochs: the inner loop runs s·e steps")
    per_class: Count = Field(PAPER.per_class, description="synthetic objects of each class per step")
    method: Literal[METHODS] = Field(PAPER.method, description="hypergradient method")
    momentum: Momentum = Field(PAPER.momentum, description="γ of the inner SGD, in [0, 1); `reversible` needs γ > 0")
    snapshots: Count | None = Field(None, description="stored states of `checkpoint` (default √(s·e) segments)")
    memory: Memory | None = Field(None, description="budget of one sweep's stored states: bytes or `\"512MiB\"`, "
                                  "`\"2GiB\"`, `\"64MB\"`; `method = \"auto\"` picks the method that fits")  # fmt: skip
    offload: Literal["cpu", "disk"] | None = Field(None, description="snapshots beyond memory: `\"cpu\"` host memory, "
                                                   "`\"disk\"` a memory-mapped file (two-level); same results")  # fmt: skip
    offload_dir: str | None = Field(None, description="folder of `offload = \"disk\"`'s files (default: the temporary one)")
    init_lr: Rate = Field(PAPER.init_lr, description="initial value of every learned learning rate")
    outer_lr: Rate = Field(PAPER.outer_lr, description="Adam's learning rate in the outer loop")
    outer_lr_schedule: Literal[OUTER_LR_SCHEDULES] = Field(
        "constant", description="Adam's rate: `constant`, or `cosine` from `outer_lr` down to 0 at the last outer step")
    outer_epochs: Count = Field(PAPER.outer_epochs, description="passes over the real data")
    outer_steps: Count | None = Field(None, description="exactly this many outer steps instead of `outer_epochs`")
    batch_size: Count = Field(PAPER.batch_size, description="real objects per outer step")
    soft_labels: bool = Field(False, description="also learn soft labels")
    compile: bool = Field(False, description="`torch.compile` the generic step (ConvNets; pays for long runs only)")
    init: Literal[INITS] = Field("noise", description="synthetic objects start as noise or real ones of their class")
    theta0: Literal[THETA0] = Field("random", description="a fresh random θ0 every outer step, or one per model")
    dtype: Literal[DTYPES] = Field("float32", description="floating-point type of the distillation")
    device: Checked = Field("cpu", description="where it distils: `cpu`, `cuda` (the rank's GPU) or `cuda:N`")
    seed: Seed = Field(PAPER.seed, description="Distiller seed of restart 0; restart r uses seed + r")
    restarts: Count = Field(1, description="R, independent distillations: the jobs `<name>-r0` … `<name>-r{R−1}`")
    batch_restarts: Count | None = Field(None, description="restarts batched in one Distiller (default all)")
    save_every: Count = Field(50, description="outer steps between checkpoints of the outer loop")


class Config(Settings):
    """One ``[[jobs]]`` table over ``[defaults]``, its name made and its data paths absolute."""

    name: Checked = Field("", description="folder of its results; default `<data>-<arch>+…`, e.g. `moons-2-layer`")
    evaluate: Evaluation = Field(default_factory=Evaluation, description="this job's overrides of the `evaluate.` keys")
    _index: int = 0
    index = property(lambda self: self._index, doc="Its place in the file: ``jobs[index]``.")
    internal_archs = property(lambda self: self.archs * (self.models or 3) if len(self.archs) == 1 else self.archs,
                              doc="The m internal models' arch names.")  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What makes the results, as JSON (in metrics.json, compared on resume): not save_every nor data_root."""
        return self.model_dump(mode="json", exclude={"save_every", "data_root"})

    @model_validator(mode="after")
    def _images(self, info: ValidationInfo) -> Config:
        """On image data, the keys left out (in the job and in ``[defaults]``) from :data:`IMAGE_DEFAULTS`;
        an ``outer_epochs`` given counts in epochs, and several ``archs`` keep one model each."""
        if not is_image_data(self.data if self.data in NAMED else info.context["folder"] / self.data):
            return self
        update = {key: value for key, value in IMAGE_DEFAULTS.items() if key not in self.model_fields_set}
        if "outer_epochs" in self.model_fields_set:
            update.pop("outer_steps", None)
        if len(update.get("archs", self.archs)) > 1:
            update.pop("models", None)
        return self.model_copy(update=update)

    @model_validator(mode="after")
    def _job(self, info: ValidationInfo) -> Config:
        """Problems between keys of one job (once each key is valid and image defaults are in); its
        name and absolute paths."""
        folder, n, kind = info.context["folder"], len(self.archs), Path(self.data).suffix.lower()
        path = folder / self.data
        name = self.name or f"{path.stem}-" + "+".join(dict.fromkeys(self.archs))
        _raise((n > 1 and self.models not in (None, n),
                f"models: {self.models} does not match the {n} archs (one model each); leave it out or set it to {n}"),
               (self.method == "reversible" and self.momentum == 0,
                f"momentum: method 'reversible' needs momentum > 0, got {self.momentum}"),
               (kind in FILES and not path.is_file(), f"data: no {kind[1:].upper()} file at {str(path)!r}"),
               (kind == ".csv" and self.label is None,
                f"label: required with the CSV data {self.data!r} (the label column)"),
               (not FOLDER_NAME.fullmatch(name),
                f"name: the name made from data and archs, {NAME_RULE.format(name)}; give the job a name"),
               (self.offload is not None and self.method in ("autograd", "reversible"),
                f"offload: method {self.method!r} stores no snapshots to offload"),
               (self.offload_dir is not None and self.offload != "disk",
                f"offload_dir: goes with offload = \"disk\", got offload = {self.offload!r}"),
               (self.offload_dir is not None and not (folder / self.offload_dir).is_dir(),
                f"offload_dir: no folder at {str(folder / (self.offload_dir or ''))!r}"))  # fmt: skip
        paths = {key: str((folder / value).resolve()) for key in ("data", "data_root", "offload_dir")
                 if (value := getattr(self, key)) is not None and value not in NAMED}  # fmt: skip
        return self.model_copy(update={"name": name, **paths})


class Document(_Table):
    """The top level of a job file: the switch and the tables (validated by :func:`parse`, whose
    context holds the file's folder)."""

    data_parallel: bool = Field(False, description="each distillation on all ranks, its models split (else sharded)")
    defaults: Settings = Field(default_factory=Settings, description="any `jobs.` key but `name`, `evaluate`")
    evaluate: Evaluation = Field(default_factory=Evaluation, description="how every job is tested: `evaluate.` keys")
    jobs: list[Config] = Field(min_length=1, description="one `[[jobs]]` table per config: the `jobs.` keys")

    @model_validator(mode="before")
    @classmethod
    def _merge(cls, document: Any, info: ValidationInfo) -> Any:
        """Each job table over the valid keys of ``[defaults]``, its ``evaluate`` over those of ``[evaluate]``."""
        if not isinstance(document, dict) or not isinstance(jobs := document.get("jobs"), list):
            return document
        base, evaluate = (_valid_keys(model, document.get(key), info) for key, model in
                          (("defaults", Settings), ("evaluate", Evaluation)))  # fmt: skip
        return {**document, "jobs": [{**base, **job, "evaluate": {**evaluate, **job.get("evaluate", {})}}
                                     if isinstance(job, dict) and isinstance(job.get("evaluate", {}), dict) else job
                                     for job in jobs]}  # fmt: skip

    @model_validator(mode="after")
    def _names(self) -> Document:
        """Number the jobs (``Config.index``); their names must differ."""
        first = {}
        for i, config in enumerate(self.jobs):
            config._index, first[config.name] = i, first.get(config.name, i)
        _raise(*((first[c.name] != c.index, f"jobs[{c.index}].name: {c.name!r} is already the name of "
                  f"jobs[{first[c.name]}]; give each job a distinct name") for c in self.jobs))  # fmt: skip
        return self


def _valid_keys(model: type[_Table], table: Any, info: ValidationInfo) -> dict:
    """The keys of ``table`` valid in ``model`` (the others are reported at the table's own key path)."""
    try:
        model.model_validate(table, context=info.context)
    except ValidationError as error:
        bad = {e["loc"][0] for e in error.errors() if e["loc"]}
        return {key: value for key, value in table.items() if key not in bad} if isinstance(table, dict) else {}
    return table


def _raise(*checks: tuple[bool, str]) -> None:
    """Raise the problems (``"<key path>: <problem>"``) of the failed ``checks`` as one error."""
    if problems := [problem for failed, problem in checks if failed]:
        raise PydanticCustomError("problems", "{problems}", {"problems": problems})


@dataclass(frozen=True)
class Job:
    """Restart ``restart`` of ``config``, e.g. ``moons-2-layer-r0``: it writes ``OUT/<name>/``."""

    config: Config
    restart: int
    name = property(lambda self: f"{self.config.name}-r{self.restart}")
    seed = property(lambda self: self.config.seed + self.restart)  # the Distiller seed of this restart


@dataclass(frozen=True)
class JobFile:
    """A validated job file: its path, its configs, the data-parallel switch and every job (in file order)."""

    path: Path
    configs: tuple[Config, ...]
    data_parallel: bool = False
    jobs = property(lambda self: [Job(c, r) for c in self.configs for r in range(c.restarts)])


_SAYS = {"int_type": "expected an integer", "float_type": "expected a number", "bool_type": "expected true or false",
         "string_type": "expected a string", "tuple_type": "expected a non-empty list of strings",
         "too_short": "expected a non-empty list of strings", "model_type": "expected a table",
         "dict_type": "expected a table", "greater_than_equal": "must be >= {ge}", "greater_than": "must be > {gt}",
         "less_than": "must be < {lt}", "finite_number": "must be finite",
         "literal_error": "expected one of {expected}"}  # fmt: skip


def _messages(error: ErrorDetails, errors: list[ErrorDetails]) -> list[str]:
    """pydantic's ``error`` (one of ``errors``) as ``"<key path>: <problem>"`` lines (none for a list left
    empty by its invalid items: their errors say it)."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "too_short" and any(o["loc"][: len(loc)] == loc and o is not error for o in errors):
        return []
    if kind == "problems":
        return [f"{path}.{problem}".lstrip(".") for problem in error["ctx"]["problems"]]
    if loc == ("jobs",):
        return ["jobs: expected a non-empty list of [[jobs]] tables"]
    if kind == "extra_forbidden":
        model: Any = Document
        for key in (key for key in loc[:-1] if isinstance(key, str)):  # down to the table holding the key
            model = model.model_fields[key].annotation
            model = get_args(model)[0] if get_origin(model) is list else model
        close = difflib.get_close_matches(str(loc[-1]), keys := list(model.model_fields), n=1)
        return [f"{path}: unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; expected one of {keys}"]
    if kind not in _SAYS:
        return [f"{path}: {error['ctx']['error'] if kind == 'value_error' else error['msg']}"]
    typed = f" ({type(value).__name__})" if kind.endswith("_type") and not isinstance(value, list) else ""
    return [f"{path}: {_SAYS[kind].format(**error.get('ctx', {}))}, got {value!r}{typed}"]


def parse(text: str, path: str | Path = "job.toml") -> JobFile:
    """Validate the TOML ``text`` of the job file at ``path`` and build its :class:`JobFile`.

    Raises:
      ValueError: one line per problem, ``"<file>: <key path>: <problem>"``.
    """
    path = Path(path)
    try:
        document = tomllib.loads(text)
        valid = Document.model_validate(document, context={"folder": path.parent})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path.name}: not valid TOML: {error}") from None
    except ValidationError as error:
        errors = error.errors()
        lines = [f"{path.name}: {line}" for e in errors for line in _messages(e, errors)]
        raise ValueError("\n".join(lines)) from None
    return JobFile(path, tuple(valid.jobs), valid.data_parallel)


def read(path: str | Path) -> JobFile:
    """:func:`parse` the job file at ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"batch: no job file at {str(path)!r}")
    return parse(Path(path).read_text(encoding="utf-8"), path)


def schema_table() -> str:
    """The job-file keys as a markdown table (key, type, default, description), made from the models."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for prefix, model in (("", Document), ("jobs.", Config), ("evaluate.", Evaluation)):
        schema = model.model_json_schema()
        for key, field in schema["properties"].items():
            kind = next(f for f in field.get("anyOf", [field]) if f.get("type") != "null")
            shown = {"object": "table", "array": "list of strings" if "type" in kind.get("items", {}) else
                     "list of tables"}.get(kind.get("type", "object"), kind.get("type"))  # fmt: skip
            shown = "one of " + ", ".join(f"`{c}`" for c in kind["enum"]) if "enum" in kind else shown
            shown += "".join(f" {s} {kind[b]}" for b, s in (("minimum", "≥"), ("exclusiveMinimum", ">")) if b in kind)
            default = field.get("default")
            default = "—" if default in (None, "") else f"`{json.dumps(default, ensure_ascii=False)}`"
            default = "required" if key in schema.get("required", ()) else default
            if prefix == "jobs." and key in IMAGE_DEFAULTS:
                default += f"; images `{json.dumps(IMAGE_DEFAULTS[key], ensure_ascii=False)}`"
            rows.append(f"| `{prefix}{key}` | {shown} | {default} | {field['description']} |")
    return "\n".join(rows) + "\n"
