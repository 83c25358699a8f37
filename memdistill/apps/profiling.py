"""Peak memory and time of one hypergradient versus the unroll length n, per method.

CPU: growth of the peak resident set size (VmHWM of /proc/self/status) over the process's
peak after the problem is built and one warm-up epoch has run, each point in a fresh process
so no measurement inherits another one's heap. CUDA: ``torch.cuda.max_memory_allocated`` growth
over the warm-up's peak (the peak statistics are reset per point). Used by ``memdistill
profile`` and ``bench/rss.py``.

The problem is a :class:`Problem`: by default the paper's 2-W-…-W-1 ReLU MLP on random 2-D
points (:func:`mlp_problem`); :func:`make_problem` checks and builds any architecture name of
:func:`memdistill.models.resolve_arch` on a data set (sampled once, here) or on random
standard-normal inputs of a given shape. A :class:`Problem` holds only names, shapes and
sampled arrays, so a fresh process rebuilds the model from them.
"""
from __future__ import annotations

import csv
import io
import math
import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Problem", "make_problem", "parse_shape", "mlp_problem", "measure", "measure_in_fresh_process",
           "profile", "available_memory", "write_csv", "plot_profile", "format_table", "plan_rows", "format_plan",
           "DEFAULT_METHODS", "RESOLUTION"]

MiB = 2 ** 20
DEFAULT_METHODS = ("autograd", "replay", "checkpoint", "reversible")
RESOLUTION = MiB
"""Peak-RSS growth below this is not resolved: a small run fits in the heap the warm-up freed."""
FIELDS = ["method", "n", "width", "depth", "momentum", "device", "peak_bytes", "seconds",
          "peak_stored_bytes", "forward_steps", "skipped",
          "arch", "in_shape", "classes", "batch", "real_batch", "data", "predicted_peak_bytes", "plan", "offload"]
"""CSV columns: the first eleven are the original ones (``width``/``depth`` empty for an
architecture given by name); ``in_shape`` is written like ``3x32x32``, ``batch`` is b = objects
per synthetic step, ``data`` a data set name or ``random``; ``predicted_peak_bytes`` is the
planner's prediction of ``peak_stored_bytes`` (the measured one), ``plan`` what ran
(``checkpoint/binomial(60)``: method/schedule(snapshots)), ``offload`` its second storage level
("cpu", "disk" or empty)."""

OFFLOADING = ("replay", "checkpoint", "auto")
"""The methods that store snapshots and so take ``offload``; the others run without it."""

MAX_STEPS = 40
"""A point with n inner steps runs s = gcd(n, 40) synthetic batches for n / s epochs."""


def mlp_problem(width: int = 10, depth: int = 3, steps: int = 40, epochs: int = 5, batch: int = 8,
                real: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> tuple:
    """(model, x_syn, y_syn, lrs, x_real, y_real) for a 2-width^depth-1 ReLU MLP on 2-D binary data.

    The defaults are the paper's configuration: 2-10-10-10-1, s = 40, e = 5, b = 8, real batch 64.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sizes = [2] + [width] * depth + [1]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
    x_syn = torch.randn(steps, batch, 2, generator=g, dtype=dtype)
    y_syn = torch.randint(0, 2, (steps, batch), generator=g)
    lrs = torch.full((steps * epochs,), 0.02, dtype=dtype)
    x = torch.randn(real, 2, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (real,), generator=g)
    return tuple(t.to(device) for t in (model, x_syn, y_syn, lrs, x, y))


@dataclass(frozen=True)
class Problem:
    """What one measured hypergradient is computed on, by value (picklable into a fresh process).

    Attributes:
      arch: an architecture name or import string of :func:`memdistill.models.resolve_arch`,
        built with :func:`memdistill.models.fresh_model` (seed ``seed``); None: the default
        2-``width``^``depth``-1 ReLU MLP of :func:`mlp_problem` on random 2-D points (binary).
      width, depth: the default MLP's hidden width and layers (None for a named ``arch`` that
        is not that MLP).
      in_shape, classes: the shape of one input and the number of classes.
      per_class: synthetic objects per class and step; b = ``per_class`` · ``classes``.
      real_batch: inputs of the outer (real) loss.
      data: the data set the arrays were sampled from, or ``"random"`` (standard-normal
        inputs drawn from ``seed``, balanced synthetic labels, uniform real labels).
      samples: for a data set, (x_syn [40, b, *in_shape], y_syn [40, b], x_real
        [real_batch, *in_shape], y_real [real_batch]) as numpy arrays; a point with s
        synthetic steps uses the first s.
    """

    arch: str | None = None
    width: int | None = 256
    depth: int | None = 3
    in_shape: tuple[int, ...] = (2,)
    classes: int = 2
    per_class: int = 4
    real_batch: int = 64
    data: str = "random"
    seed: int = 0
    samples: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def arch_name(self) -> str:
        """``arch``, or the default MLP's name ``mlp[W,W,...]`` (a valid ``--arch``)."""
        return self.arch or "mlp[" + ",".join([str(self.width)] * (self.depth or 0)) + "]"

    @property
    def batch(self) -> int:
        """b: synthetic objects per inner step."""
        return self.per_class * self.classes

    def columns(self) -> dict[str, Any]:
        """The CSV columns describing the problem."""
        return {"width": self.width if self.width is not None else "",
                "depth": self.depth if self.depth is not None else "",
                "arch": self.arch_name, "in_shape": "x".join(map(str, self.in_shape)), "classes": self.classes,
                "batch": self.batch, "real_batch": self.real_batch, "data": self.data}

    def describe(self) -> str:
        """One line for titles and logs."""
        if self.arch is None:
            return f"2-{'-'.join([str(self.width)] * (self.depth or 0))}-1 MLP, b = {self.batch}"
        inputs = "x".join(map(str, self.in_shape))
        return f"{self.arch} on {self.data} {inputs}, {self.classes} classes, b = {self.batch}, real batch {self.real_batch}"

    def build(self, steps: int, epochs: int, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> tuple:
        """(model, x_syn [steps, b, *in_shape], y_syn [steps, b], lrs [steps·epochs], x_real, y_real)."""
        if self.arch is None:
            assert self.width is not None and self.depth is not None
            return mlp_problem(self.width, self.depth, steps=steps, epochs=epochs, batch=self.batch,
                               real=self.real_batch, seed=self.seed, dtype=dtype, device=device)
        from memdistill.models import fresh_model, resolve_arch

        model = fresh_model(resolve_arch(self.arch, self.in_shape, self.classes), self.seed, dtype)
        if self.samples is not None:
            x_syn, y_syn, x, y = (torch.from_numpy(np.asarray(a)) for a in self.samples)
            x_syn, y_syn, x = x_syn[:steps].to(dtype), y_syn[:steps], x.to(dtype)
        else:
            g = torch.Generator().manual_seed(self.seed)
            x_syn = torch.randn(steps, self.batch, *self.in_shape, generator=g, dtype=dtype)
            y_syn = torch.arange(self.classes).repeat_interleave(self.per_class).expand(steps, -1).contiguous()
            x = torch.randn(self.real_batch, *self.in_shape, generator=g, dtype=dtype)
            y = torch.randint(0, self.classes, (self.real_batch,), generator=g)
        lrs = torch.full((steps * epochs,), 0.02, dtype=dtype)
        return tuple(t.to(device) for t in (model, x_syn, y_syn, lrs, x, y))


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"3,32,32"`` (or a sequence of ints) as a tuple of positive ints; ValueError naming --in-shape."""
    try:
        items = [int(v) for v in (text.replace("x", ",").split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        items = []
    if not items or min(items) < 1:
        raise ValueError(f"--in-shape must be comma-separated positive integers such as 3,32,32 (channels, "
                         f"height, width) or 2 (features), got {text!r}")
    return tuple(items)


def _positive(value: int | None, option: str, least: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ValueError(f"{option} must be an integer >= {least}, got {value!r}")


def make_problem(arch: str | None = None, *, width: int | None = None, depth: int | None = None,
                 data: str | None = None, data_root: str | Path | None = None, label: str | None = None,
                 in_shape: str | Sequence[int] | None = None, classes: int | None = None,
                 per_class: int | None = None, real_batch: int | None = None, seed: int = 0) -> Problem:
    """Check the options of ``memdistill profile`` and build its :class:`Problem`, before any measuring.

    Args:
      arch: any name or import string of :func:`memdistill.models.resolve_arch`; None: the MLP
        with ``depth`` hidden layers ``width`` wide (default 3 × 256).
      width, depth: the default MLP's; not with ``arch``.
      data, data_root, label: a data set of :func:`memdistill.data.load_dataset` (name or
        path): x̃ starts from ``per_class`` random training inputs of each class per step, the
        real batch is ``real_batch`` random training inputs.
      in_shape, classes: random standard-normal inputs of this shape (``"3,32,32"`` or a
        tuple) and ``classes`` classes (default 10 for an image shape, else 2); not with ``data``.
        With neither ``data`` nor ``in_shape`` the default MLP runs on 2-D points of 2 classes
        (:func:`mlp_problem`) and a named ``arch`` on random inputs of shape (2,).
      per_class: synthetic objects per class and step (default 4 for 1-D inputs, i.e. b = 8
        for two classes as in the paper; 1 for images).
      real_batch: real inputs of the outer loss (default 64).

    Raises:
      ValueError naming the option at fault (an unknown ``--arch`` or one that does not take
      the inputs, a bad ``--in-shape``, ``--data`` with ``--in-shape``, …); a data set whose
      files are missing raises :class:`memdistill.data.DataNotFoundError` (also a ValueError).
    """
    from memdistill.models import check_arch

    for value, option, least in [(width, "--width", 1), (depth, "--depth", 1), (classes, "--classes", 2),
                                 (per_class, "--per-class", 1), (real_batch, "--real-batch", 1)]:
        _positive(value, option, least)
    if arch is not None and (width is not None or depth is not None):
        raise ValueError("--width/--depth describe the default MLP and cannot be combined with --arch; "
                         "name the widths in the arch instead, e.g. --arch mlp[256,256,256]")
    if data is not None and in_shape is not None:
        raise ValueError("--data and --in-shape exclude each other: --in-shape profiles random inputs "
                         "of that shape, --data takes the shape of the data set")
    if classes is not None and in_shape is None:
        raise ValueError("--classes goes with --in-shape (a data set brings its own classes; the default "
                         "problem has 2)")
    if (data_root is not None or label is not None) and data is None:
        raise ValueError(f"{'--data-root' if data_root is not None else '--label'} needs --data")
    mlp = arch is None
    width, depth = (width or 256, depth or 3) if mlp else (None, None)
    real_batch = real_batch or 64
    if data is None and in_shape is None and mlp:
        return Problem(None, width, depth, (2,), 2, per_class or 4, real_batch, seed=seed)
    name = arch if arch is not None else "mlp[" + ",".join([str(width)] * (depth or 0)) + "]"
    dataset = None
    if data is not None:
        from memdistill.data import load_dataset

        dataset = load_dataset(data, root=data_root, label=label)
        shape, classes = tuple(dataset.in_shape), dataset.classes
    else:
        shape = parse_shape(in_shape) if in_shape is not None else (2,)
        classes = classes or (10 if len(shape) > 1 else 2)
    try:
        check_arch(name, shape, classes)
    except (ValueError, TypeError) as error:
        option = f"--arch {name!r}" if arch is not None else f"the default MLP {name}"
        raise ValueError(f"{option} on inputs of shape {list(shape)} with {classes} classes: {error}") from None
    per_class = per_class or (1 if len(shape) > 1 else 4)
    problem = Problem(name, width, depth, shape, classes, per_class, real_batch, seed=seed)
    if dataset is None:
        return problem
    return Problem(name, width, depth, shape, classes, per_class, real_batch, data=str(data), seed=seed,
                   samples=_sample(dataset, per_class, real_batch, seed))


def _sample(dataset: Any, per_class: int, real_batch: int, seed: int) -> tuple[np.ndarray, ...]:
    """x_syn [40, b, ...] of ``per_class`` random training inputs of each class per step (labels
    0 0 … 1 1 …), and a real batch of distinct random training inputs."""
    g = torch.Generator().manual_seed(seed)
    x, y = dataset.x_train, dataset.y_train
    if real_batch > len(y):
        raise ValueError(f"--real-batch {real_batch} exceeds the {len(y)} training inputs of {dataset.name}")
    columns = []
    for c in range(dataset.classes):
        pool = (y == c).nonzero().flatten()
        if len(pool) == 0:
            raise ValueError(f"--data {dataset.name}: class {c} has no training inputs")
        columns.append(pool[torch.randint(len(pool), (MAX_STEPS, per_class), generator=g)])
    index = torch.cat(columns, dim=1)                                   # [40, b], class-major
    real = torch.randperm(len(y), generator=g)[:real_batch]
    return (x[index].float().numpy(), y[index].numpy(), x[real].float().numpy(), y[real].numpy())


def _peak_memory(device: str) -> int:
    """Peak bytes so far: CUDA max_memory_allocated, else this process's own peak RSS.

    The peak RSS is VmHWM of /proc/self/status, not ``ru_maxrss``: a spawned child's
    ``ru_maxrss`` starts at its parent's RSS at fork time (Linux keeps the larger of the
    pre-exec and the new address space's peaks), so any growth below that would not show.
    """
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _plan_name(plan: Any) -> str:
    """``checkpoint/binomial(60)``: method/schedule(snapshots) of a :class:`memdistill.Plan`."""
    return f"{plan.method}/{plan.schedule}" + (f"({plan.snapshots})" if plan.snapshots else "")


def measure(method: str, n: int, width: int = 256, depth: int = 3, momentum: float = 0.9,
            snapshots: int | None = None, threads: int = 1, device: str = "cpu",
            problem: Problem | None = None, memory: int | None = None,
            offload: str | None = None) -> dict[str, Any]:
    """One hypergradient with n inner steps: s = gcd(n, 40) synthetic batches, n / s epochs.

    ``problem`` None: the default MLP of ``width`` and ``depth`` (:func:`mlp_problem`);
    ``memory``, ``offload``: as :func:`memdistill.hypergradient` takes them (bytes; "cpu" | "disk",
    files in the temporary directory).
    """
    from memdistill.engine.hypergradient import hypergradient

    problem = problem if problem is not None else Problem(width=width, depth=depth)
    torch.set_num_threads(threads)
    steps = math.gcd(n, MAX_STEPS)
    args = problem.build(steps, n // steps, device=device)
    if device.startswith("cuda"):   # in-process on CUDA: forget the previous points' peaks
        torch.cuda.reset_peak_memory_stats(device)
    # Warm-up with one epoch: allocator pools and autograd's workspaces are a fixed cost, not
    # what the method stores for n steps.
    hypergradient(*args[:3], args[3][:steps], *args[4:], momentum=momentum, method=method, snapshots=snapshots,
                  memory=memory, offload=offload)
    _synchronize(device)
    before = _peak_memory(device)
    start = time.perf_counter()
    hg = hypergradient(*args, epochs=n // steps, momentum=momentum, method=method, snapshots=snapshots,
                       memory=memory, offload=offload)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {"method": method, "n": n, **problem.columns(), "momentum": momentum, "device": device,
            "offload": offload or "", "peak_bytes": _peak_memory(device) - before, "seconds": seconds,
            "peak_stored_bytes": hg.stats["peak_stored_bytes"], "forward_steps": hg.stats["forward_steps"],
            "skipped": "", "predicted_peak_bytes": hg.stats["predicted_peak_bytes"],
            "plan": _plan_name(hg.stats["plan"])}


def measure_in_fresh_process(method: str, n: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a newly spawned interpreter (its peak RSS starts clean)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, n), kwargs)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (the memory a new process can use)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("profile: /proc/meminfo has no MemAvailable line")


def profile(ns: Sequence[int], methods: Sequence[str], *, width: int = 256, depth: int = 3,
            momentum: float = 0.9, device: str = "cpu", budget: float = 0.6,
            on_row: Callable[[dict[str, Any]], None] | None = None,
            problem: Problem | None = None, memory: int | None = None,
            offload: str | None = None) -> list[dict[str, Any]]:
    """Measure every (method, n), smallest n first; skip a point whose memory, extrapolated
    linearly from the method's last measured point, exceeds ``budget`` of the available memory.

    ``problem`` (see :func:`make_problem`) None: the default MLP of ``width`` and ``depth``.
    Linear extrapolation is an upper bound for the sublinear methods and exact in the limit
    for autograd and replay. ``on_row`` sees each row as soon as it exists (progress).
    ``memory``: the budget (bytes) of the "auto" rows (the other methods run as asked);
    ``offload``: the second storage level ("cpu" | "disk") of the rows of :data:`OFFLOADING`.
    """
    problem = problem if problem is not None else Problem(width=width, depth=depth)
    rows = []
    for method in methods:
        last: dict[str, Any] | None = None
        budget_of = memory if method == "auto" else None
        offload_of = offload if method in OFFLOADING else None
        for n in sorted(ns):
            limit = budget * (torch.cuda.mem_get_info()[0] if device.startswith("cuda") else available_memory())
            need = last["peak_bytes"] * n / last["n"] if last else 0.0
            if need > limit:
                row = {"method": method, "n": n, **problem.columns(), "momentum": momentum,
                       "device": device, "skipped": f"needs ~{need / 2**30:.1f} GiB (extrapolated from "
                       f"n={last['n']}), over {budget:.0%} of the {limit / budget / 2**30:.1f} GiB available"}
            elif device.startswith("cuda"):
                row = last = measure(method, n, momentum=momentum, device=device, problem=problem, memory=budget_of,
                                     offload=offload_of)
            else:
                row = last = measure_in_fresh_process(method, n, momentum=momentum, problem=problem, memory=budget_of,
                                                      offload=offload_of)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def plan_rows(ns: Sequence[int], methods: Sequence[str], *, momentum: float = 0.9, device: str = "cpu",
              problem: Problem | None = None, memory: int | None = None,
              offload: str | None = None) -> list[dict[str, Any]]:
    """:func:`memdistill.plan` for every (method, n) of a profile, in this process, nothing unrolled
    (autograd's prediction runs one and two steps). A method over ``memory`` gets its error as ``plan``;
    with ``offload`` ("cpu" | "disk"; the rows of :data:`OFFLOADING`) each row's ``levels`` holds the
    plan's bytes per storage level."""
    from memdistill.engine.hypergradient import plan

    problem = problem if problem is not None else Problem()
    rows = []
    for method in methods:
        for n in sorted(ns):
            steps = math.gcd(n, MAX_STEPS)
            args = problem.build(steps, n // steps, device=device)
            row = {"method": method, "n": n, **problem.columns(), "momentum": momentum, "device": device}
            try:
                p = plan(*args, epochs=n // steps, momentum=momentum, method=method, memory=memory,
                         offload=offload if method in OFFLOADING else None)
            except ValueError as error:
                rows.append({**row, "plan": str(error).removeprefix("hypergradient: ")})
                continue
            rows.append({**row, "plan": _plan_name(p), "predicted_peak_bytes": p.predicted_peak_bytes,
                         "forward_steps": p.forward_steps, "levels": dict(p.levels)})
    return rows


def format_plan(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`plan_rows`; rows planned with offload get a column of predicted
    MiB per storage level (e.g. ``memory 12.5, disk 310``)."""
    levels = any(len(r.get("levels", {})) > 1 for r in rows)
    extra = (" predicted per level (MiB) |", "---|") if levels else ("", "")
    lines = [f"| method | n | plan | predicted stored (MiB) | forward steps |{extra[0]}", f"|---|---:|---|---:|---:|{extra[1]}"]
    for r in rows:
        if "predicted_peak_bytes" not in r:
            lines.append(f"| {r['method']} | {r['n']} | {r['plan']} | | |" + (" |" if levels else ""))
            continue
        per_level = ", ".join(f"{name} {nbytes / MiB:.4g}" for name, nbytes in r["levels"].items())
        lines.append(f"| {r['method']} | {r['n']} | {r['plan']} | {r['predicted_peak_bytes'] / MiB:.4g} | "
                     f"{r['forward_steps']:,} |" + (f" {per_level} |" if levels else ""))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (columns FIELDS), written atomically."""
    from memdistill.atomic import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def plot_profile(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Log-log PNG: peak memory and seconds versus n, one colour per method.

    Memory: the measured peak growth (solid) beside the planner's predicted stored bytes (dashed);
    a growth below :data:`RESOLUTION` is drawn as an open triangle on the axis floor, not as a value.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from memdistill.apps.figures import save_png

    figure = Figure(figsize=(10, 4), layout="constrained")
    memory, seconds = figure.subplots(1, 2)
    done = [r for r in rows if not r["skipped"]]
    values = ([r["peak_bytes"] for r in done if r["peak_bytes"] >= RESOLUTION]
              + [r["predicted_peak_bytes"] for r in done if r.get("predicted_peak_bytes")])
    floor = min(values, default=RESOLUTION) / MiB / 2
    unresolved = False
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in done if r["method"] == method]
        seen = [r for r in mine if r["peak_bytes"] >= RESOLUTION]
        line, = memory.plot([r["n"] for r in seen], [r["peak_bytes"] / MiB for r in seen], "o-", label=method)
        predicted = [r for r in mine if r.get("predicted_peak_bytes")]
        memory.plot([r["n"] for r in predicted], [r["predicted_peak_bytes"] / MiB for r in predicted], "x--",
                    color=line.get_color(), alpha=0.7, label=f"{method} predicted (stored)")
        low = [r["n"] for r in mine if r["peak_bytes"] < RESOLUTION]
        memory.plot(low, [floor] * len(low), "v", mfc="none", color=line.get_color())
        unresolved |= bool(low)
        seconds.plot([r["n"] for r in mine], [r["seconds"] for r in mine], "o-", label=method)
    if unresolved:
        memory.plot([], [], "v", mfc="none", color="gray", label=f"below RSS resolution (< {RESOLUTION / MiB:g} MiB)")
    ticks = sorted({r["n"] for r in rows})
    for axis, label in [(memory, "peak memory growth (MiB)"), (seconds, "seconds per hypergradient")]:
        axis.set(xscale="log", yscale="log", xlabel="inner steps n", ylabel=label)
        axis.set_xticks(ticks, [str(n) for n in ticks])     # label the measured n, not 3x10^0
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="x-small", ncol=2 if axis is memory else 1)
    figure.suptitle(f"{_title(rows[0])}, momentum {rows[0]['momentum']}")
    return save_png(figure, path)


def _title(row: dict[str, Any]) -> str:
    """The problem of a row in words (rows of the default MLP keep the 2-W-...-W-1 title)."""
    if row.get("data", "random") == "random" and row.get("in_shape", "2") == "2" and row.get("classes", 2) == 2 \
            and str(row.get("arch", "mlp[")).startswith("mlp[") and row.get("width") not in (None, ""):
        return f"2-{'-'.join([str(row['width'])] * int(row['depth']))}-1 MLP"
    return (f"{row['arch']} on {row['data']} {row['in_shape']} inputs, {row['classes']} classes, "
            f"b = {row['batch']}, real batch {row['real_batch']}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; ratios against autograd at the same n where it was measured."""
    base = {r["n"]: r for r in rows if r["method"] == "autograd" and not r["skipped"]}
    lines = ["| method | n | peak memory (MiB) | vs autograd | stored: predicted (MiB) | stored: measured (MiB) "
             "| seconds | time vs autograd |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"| {r['method']} | {r['n']} | skipped: {r['skipped']} | | | | | |")
            continue
        b = base.get(r["n"])
        mem = f"{r['peak_bytes'] / b['peak_bytes']:.3f}" if b and b["peak_bytes"] else "–"
        tim = f"{r['seconds'] / b['seconds']:.2f}x" if b and b["seconds"] else "–"
        peak = (f"{r['peak_bytes'] / MiB:.1f}" if r["peak_bytes"] >= RESOLUTION else
                f"< {RESOLUTION / MiB:g} (below RSS resolution)")
        predicted = r.get("predicted_peak_bytes")
        predicted = f"{predicted / MiB:.2f}" if predicted not in (None, "") else "–"
        lines.append(f"| {r['method']} | {r['n']} | {peak} | {mem} | {predicted} | "
                     f"{r['peak_stored_bytes'] / MiB:.2f} | {r['seconds']:.2f} | {tim} |")
    return "\n".join(lines)
