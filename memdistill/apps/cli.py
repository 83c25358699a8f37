"""The ``memdistill`` command line: ``distill``, ``evaluate``, ``reproduce``, ``profile``, ``batch``.

memdistill distill --data moons --arch 2-layer --steps 40 --epochs 5 --models 3 --out DIR
memdistill distill --data digits-images --arch lenet --out DIR
memdistill evaluate DIR --test-arch 1-layer,2-layer,4-layer --strategy none,s1,s2,s3
memdistill reproduce --out DIR [--quick] [--sweeps]
memdistill profile --n 100,1000,10000 --methods autograd,replay,checkpoint,reversible --out DIR
memdistill profile --arch convnet --in-shape 3,32,32 --n 3,9,27,81 --out DIR
memdistill batch JOB.toml --out DIR [--resume]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memdistill import __version__
from memdistill.apps import jobfile, profiling, reproduce
from memdistill.apps.batch import CHECKPOINT_FILE, KEPT_FILES, process_group, run_batch
from memdistill.apps.report import baseline_table, markdown_table, strategy_table
from memdistill.atomic import write_json_atomic
from memdistill.data import BUNDLED, IMAGES, SYNTHETIC, DataNotFoundError, Dataset, load_dataset
from memdistill.data.images import DATA_ENV, SOURCES
from memdistill.distill.defaults import IMAGE, TABULAR, defaults_for
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import (
    FULL_STEP_COST,
    baseline_accuracies,
    baseline_steps,
    distilled_accuracies,
    summarize,
    training_steps,
)
from memdistill.distill.outer import INITS, OUTER_LR_SCHEDULES, THETA0, DivergedError
from memdistill.distill.resume import Interrupted
from memdistill.distill.training import STRATEGIES
from memdistill.engine.planner import format_bytes, parse_memory
from memdistill.engine.validation import METHODS
from memdistill.models import check_arch

DATA_FILE = "distilled.safetensors"
GRID_FILE = "grid.png"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UsageError(ValueError):
    """A command-line argument that is wrong in itself, named as the user typed it (exit status 2)."""


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value
    parse.__name__ = f"integer >= {least}"
    return parse


COUNT, NATURAL = _at_least(1), _at_least(0)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _rate(text: str) -> float:
    """An argparse type: a finite number > 0."""
    if (value := _float(text)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _memory(text: str) -> int:
    """--memory: bytes, or 512MiB, 2GiB, 64MB (parse_memory's forms)."""
    try:
        return parse_memory(text, "")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MEMORY_HELP = ("budget of the states one sweep stores for its reverse pass: bytes or 512MiB, 2GiB, 64MB "
               "(KiB/MiB/GiB binary, KB/MB/GB decimal); with --method auto it picks the fastest method that fits")


def _momentum(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    if not 0 <= (value := _float(text)) < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _add_data_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data",
        default=default,
        help=f"tables: {', '.join(SYNTHETIC + BUNDLED)} or a CSV path; images: {', '.join(IMAGES)}, "
        "an image folder (one subfolder per class) or an .npz file (arrays x, y)"
        + (f" (default: {default})" if default else " (default: the one distilled)"),
    )
    parser.add_argument("--label", help="label column of a CSV file")
    parser.add_argument(
        "--data-root", help="folder of the mnist/fashion-mnist/cifar files (default: $MEMDISTILL_DATA)"
    )


def _device(text: str) -> str:
    """An available torch device name (``cpu``, ``cuda``, ``cuda:N``), checked before any work."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch {torch.__version__})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")


ARCH_HELP = (
    "N-layer, mlp[w1,w2,...], lenet, convnet, convnet-D (depth D) or package.module:function "
    "(called as function(in_shape, classes), returns an nn.Module)"
)


DISTILL_OPTIONS = {
    "steps": (COUNT, "internal steps s per epoch"),
    "epochs": (COUNT, "internal epochs e"),
    "per_class": (COUNT, "synthetic objects per class per step"),
    "momentum": (_momentum, "inner SGD momentum, in [0, 1)"),
    "init_lr": (_rate, "initial learned learning rate"),
    "outer_lr": (_rate, "Adam learning rate"),
    "outer_epochs": (COUNT, "passes over the real data"),
    "outer_steps": (COUNT, "outer steps (overrides --outer-epochs)"),
    "batch_size": (COUNT, "real minibatch size"),
    "seed": (NATURAL, "random seed"),
}
"""Protocol fields settable from distill and reproduce: field -> (type, help)."""

REPRODUCE_OPTIONS = {
    "data": (str, "data set"),
    "restarts": (COUNT, "distillations per source"),
    "models": (COUNT, "internal models m of Table 1"),
    "total_epochs": (COUNT, "epochs of strategies s1-s3"),
    "eval_inits": (COUNT, "test models per restart"),
    "baseline_inits": (COUNT, "full-data models"),
    "baseline_epochs": (COUNT, "full-data gradient steps"),
}
"""Protocol fields settable from reproduce only."""


def _add_options(parser: argparse.ArgumentParser, options: dict[str, tuple[Callable, str]], images: bool = False) -> None:
    """``--field-name`` options (default None: the protocol's value, shown in the help; with
    ``images`` also the image default where it differs)."""
    paper = reproduce.Protocol()
    for field, (kind, text) in options.items():
        flag = "--" + field.replace("_", "-")
        default = getattr(paper, field, getattr(TABULAR, field, None))
        image = getattr(IMAGE, field, default)
        shown = f"{default}; images {image}" if images and image != default else f"{default}"
        parser.add_argument(flag, type=kind, help=f"{text} (default {shown})")


def _add_distill_options(parser: argparse.ArgumentParser, images: bool = False, method: str = "checkpoint") -> None:
    """Options shared by distill and reproduce (reproduce's defaults depend on --quick)."""
    _add_options(parser, DISTILL_OPTIONS if images else
                 {k: v for k, v in DISTILL_OPTIONS.items() if k != "outer_steps"}, images)
    shown = f"{method}; images {IMAGE.method}" if images and IMAGE.method != method else method
    parser.add_argument("--method", choices=METHODS, help=f"hypergradient method (default {shown})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three commands."""
    parser = argparse.ArgumentParser(
        prog="memdistill", description="Dataset distillation with exact, memory-bounded hypergradients."
    )
    parser.add_argument("--version", action="version", version=f"memdistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    paper = reproduce.Protocol()

    distill = commands.add_parser(
        "distill", help="distil a data set", description="Distil a data set into DIR/" + DATA_FILE + "."
    )
    _add_data_options(distill, "moons")
    distill.add_argument(
        "--arch",
        action="append",
        help=f"internal model: {ARCH_HELP}; repeat for mixed models (default {TABULAR.arch}; images {IMAGE.arch})",
    )
    distill.add_argument(
        "--models",
        type=COUNT,
        help=f"internal models m (default: {TABULAR.models} copies of a single --arch, images {IMAGE.models}; "
        "else one per --arch)",
    )
    _add_distill_options(distill, images=True)
    distill.add_argument("--init", choices=INITS, help=f"how x̃ starts (default {TABULAR.init}; images {IMAGE.init})")
    distill.add_argument(
        "--theta0", choices=THETA0, default="random",
        help="random: a fresh θ0 every outer step; fixed: one θ0 for the whole run (default random)",
    )
    distill.add_argument("--soft-labels", action="store_true", help="also learn soft labels")
    distill.add_argument("--outer-lr-schedule", choices=list(OUTER_LR_SCHEDULES), default="constant",
                         help="Adam's rate: constant (--outer-lr throughout) or cosine (from --outer-lr down to 0 "
                              "at the last outer step; resumes bit for bit) (default constant)")
    distill.add_argument("--memory", type=_memory, help=MEMORY_HELP + " (default: none; auto: half the free memory)")
    distill.add_argument(
        "--offload", choices=["cpu", "disk"],
        help="where snapshots live beyond memory (replay, checkpoint, auto): cpu = host memory (for a GPU model), "
             "disk = a two-level schedule, a few in memory and the rest in a memory-mapped file; same results")
    distill.add_argument("--offload-dir", type=Path,
                         help="folder of --offload disk's files, removed at the end (default: the temporary folder)")
    distill.add_argument(
        "--compile", action="store_true",
        help="torch.compile the generic step (ConvNets): tens of seconds per product and shape to compile, "
             "then faster steps (measured 1.8x a LeNet reverse product); pays for long runs only")
    distill.add_argument(
        "--dtype", choices=list(DTYPES), default="float32", help="float dtype (default float32)"
    )
    distill.add_argument(
        "--inits", type=NATURAL, default=10, help="fresh models tested on the result (default 10; 0: none)"
    )
    _add_device_option(distill)
    distill.add_argument("--out", required=True, type=Path, help="output directory")
    distill.add_argument(
        "--save-every", type=COUNT, default=50,
        help=f"outer steps between two saves of the outer loop's state in OUT/{CHECKPOINT_FILE} (default 50; "
        "it is also saved on Ctrl-C/SIGTERM and on divergence, and removed once the result is written)",
    )
    distill.add_argument(
        "--resume", action="store_true",
        help=f"continue the interrupted or diverged run whose state is in OUT/{CHECKPOINT_FILE} (after a "
        "divergence with a lower --outer-lr)",
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="train fresh models on distilled data and test them",
        description="Train fresh models on DIR/" + DATA_FILE + " with each strategy; report test accuracy.",
    )
    evaluate.add_argument("dir", type=Path, help="directory written by distill (or the .safetensors file)")
    evaluate.add_argument(
        "--test-arch",
        type=_comma_list,
        help="comma-separated architectures, each " + ARCH_HELP + " (default: 1-layer,2-layer,4-layer for "
        "tables; the distilled architectures for images)",
    )
    evaluate.add_argument(
        "--strategy",
        type=_comma_list,
        default=list(STRATEGIES),
        help="comma-separated from none,s1,s2,s3 (default all)",
    )
    evaluate.add_argument(
        "--inits", type=COUNT, default=10, help="fresh models per architecture and strategy (default 10)"
    )
    evaluate.add_argument(
        "--total-epochs",
        type=COUNT,
        default=paper.total_epochs,
        help=f"epochs of strategies s1-s3 (default {paper.total_epochs})",
    )
    evaluate.add_argument("--seed", type=NATURAL, default=0, help="seed of the first model (default 0)")
    evaluate.add_argument(
        "--baseline", action="store_true", help="also train on all the training data (full-data baseline)"
    )
    evaluate.add_argument(
        "--baseline-inits",
        type=COUNT,
        default=paper.baseline_inits,
        help=f"baseline models (default {paper.baseline_inits})",
    )
    evaluate.add_argument(
        "--baseline-epochs",
        type=COUNT,
        help=f"baseline epochs (default: {paper.baseline_epochs} full-batch steps for tables, "
        f"{IMAGE.baseline['epochs']} epochs of batch {IMAGE.baseline['batch_size']} for images)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_data_options(evaluate, None)
    _add_device_option(evaluate)

    repro = commands.add_parser(
        "reproduce",
        help="run the paper's protocol, write results.json, report.md and figures",
        description="Run the paper's experiments 2-5 (and the Fig. 4 sweeps with --sweeps); paper settings by "
        "default: 141 s on a quiet 2-core machine (--jobs: the cores). One "
        "progress bar covers the run (its time left weighs each task by its estimated work) and a line is "
        "printed as each phase ends (baseline, distill, evaluate, sweeps, figures); --no-progress hides only "
        "the bars.",
    )
    repro.add_argument("--out", required=True, type=Path, help="output directory")
    repro.add_argument(
        "--quick",
        action="store_true",
        help="a reduced protocol that checks the pipeline end to end (9 s measured on 2 cores, plus about 2 s "
        "of Python start-up); its results, report and figures are marked as a quick run, not the reproduction: "
        + ", ".join(f"{k}={v}" for k, v in reproduce.QUICK.items()),
    )
    repro.add_argument(
        "--sweeps", action="store_true", help="also run the hyper-parameter sweeps (paper Fig. 4)"
    )
    repro.add_argument(
        "--jobs",
        type=COUNT,
        default=min(4, os.cpu_count() or 1),
        help="distillations run at once in separate processes, one thread each (default: the CPU cores, at most "
             "4, one per source; results do not depend on it)",
    )
    _add_options(repro, REPRODUCE_OPTIONS)
    _add_distill_options(repro, method=paper.method)
    repro.add_argument("--memory", type=_memory, help=MEMORY_HELP + f" (default: none; the protocol's "
                       f"{paper.method} stores a few MiB)")

    jobs = commands.add_parser(
        "batch",
        help="run the distillations of a TOML job file; shards them over torchrun's ranks; resumable",
        description="Run every job of JOB_FILE (configs x restarts), each writing OUT/<job>/ "
        "(distilled.safetensors, metrics.json, figures), then OUT/summary.json and summary.md. "
        "Under torchrun (e.g. torchrun --nproc_per_node=2 -m memdistill batch ...) the jobs are "
        "sharded over the ranks, or, with data_parallel = true in the job file, each distillation "
        "splits its internal models over them; results equal a single process's. Keys: see "
        "memdistill/jobfile.py.",
    )
    jobs.add_argument(
        "job_file", type=Path, help="TOML job file ([[jobs]] tables, optional [defaults], [evaluate])"
    )
    jobs.add_argument("--out", required=True, type=Path, help="output directory")
    jobs.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed batch in --out: skip finished jobs, continue the others from checkpoints",
    )
    jobs.add_argument(
        "--threads", type=COUNT, help="torch threads per process (default torch's; results depend on it)"
    )
    jobs.add_argument("--no-progress", action="store_true", help="hide progress bars")

    prof = commands.add_parser(
        "profile",
        help="peak memory and time of one hypergradient versus n, per method",
        description="Measure one hypergradient per (method, n), each CPU point in a fresh process (peak RSS "
        "growth; CUDA: max_memory_allocated growth). The model is a 2-W-...-W-1 ReLU MLP on random 2-D "
        "points unless --arch, --data or --in-shape say otherwise. A point whose memory, extrapolated from "
        "the method's last measured point, would not fit is skipped and said so. "
        "Writes OUT/profile.csv and OUT/profile.png (log-log) and prints a table.",
    )
    prof.add_argument("--n", type=_int_list, default=[100, 1000, 10000], help="inner steps (default 100,1000,10000)")
    prof.add_argument("--methods", type=_comma_list, default=list(profiling.DEFAULT_METHODS), help=f"default {','.join(profiling.DEFAULT_METHODS)}; "
                      "also auto")
    prof.add_argument("--memory", type=_memory, help=MEMORY_HELP + "; measuring, it is the budget of the auto "
                      "rows; with --plan every method is checked against it")
    prof.add_argument("--plan", action="store_true",
                      help="print what each (method, n) would store and recompute (md.plan), without running it")
    prof.add_argument("--offload", choices=["cpu", "disk"],
                      help="a second storage level for the snapshots of replay, checkpoint and auto: host memory "
                      "(cpu, with a GPU) or files in the temporary folder (disk); --plan shows the bytes on each level")
    prof.add_argument("--arch", help=ARCH_HELP + " (default: the MLP of --width and --depth)")
    prof.add_argument("--width", type=COUNT, help="hidden width of the default MLP (default 256)")
    prof.add_argument("--depth", type=COUNT, help="hidden layers of the default MLP (default 3: the paper's 4-layer MLP)")
    prof.add_argument(
        "--data",
        help=f"sample the inputs from a data set: tables {', '.join(SYNTHETIC + BUNDLED)} or a CSV path; images "
        f"{', '.join(IMAGES)}, an image folder or an .npz file (default: random inputs)",
    )
    prof.add_argument("--data-root", help="folder of the mnist/fashion-mnist/cifar files (default: $MEMDISTILL_DATA)")
    prof.add_argument("--label", help="label column of a CSV --data file")
    prof.add_argument(
        "--in-shape",
        help="random standard-normal inputs of this shape instead of a data set, e.g. 3,32,32 (no data files; "
        "not with --data; default: 2-D points)",
    )
    prof.add_argument("--classes", type=_at_least(2), help="classes of --in-shape inputs (default 10 for images, else 2)")
    prof.add_argument(
        "--per-class", type=COUNT,
        help="synthetic objects per class per step, b = per-class x classes (default 4, i.e. b = 8 for 2 classes; "
        "images 1)",
    )
    prof.add_argument("--real-batch", type=COUNT, help="real inputs of the outer loss (default 64)")
    prof.add_argument("--momentum", type=_momentum, default=0.9, help="inner momentum, > 0 for reversible (default 0.9)")
    prof.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                      help="cpu, cuda or cuda:N (default cuda where available)")
    prof.add_argument("--out", type=Path, help="output directory (required unless --plan)")
    for command in commands.choices.values():  # --debug may also follow the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of any error")
    return parser


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _archs(names: Sequence[str], models: int | None, dataset: Dataset, default: int) -> list:
    """The internal models: one name replicated ``models`` (default) times, or one per name;
    each checked on the data's shape before any work."""
    factories = [_arch("--arch", name, dataset) for name in names]
    return factories * (default if models is None else models) if len(factories) == 1 else factories


def _arch(option: str, name: str, dataset: Dataset) -> Callable:
    """check_arch, its errors as a UsageError naming ``option``."""
    try:
        return check_arch(name, dataset.in_shape, dataset.classes)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{option}: {str(error).removeprefix('resolve_arch: ')}") from None


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The options among ``names`` given on the command line (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _data_config(args: argparse.Namespace, dataset: Dataset) -> dict:
    """What DistilledData.config records of the data: how to load it again and how to show it."""
    config = {"data": args.data, "label": args.label, **dataset.display()}
    if args.data_root is not None:
        config["data_root"] = str(Path(args.data_root).resolve())
    return config


def _fit_options(args: argparse.Namespace, dataset: Dataset) -> dict:
    """fit's keyword arguments: the data kind's defaults under the options given; an explicit
    --outer-epochs without --outer-steps counts in epochs."""
    fit = {**defaults_for(dataset.is_image).fit(), **_given(args, ["outer_epochs", "batch_size", "outer_steps"])}
    if args.outer_epochs is not None and args.outer_steps is None:
        fit["outer_steps"] = None
    return fit


def cmd_distill(args: argparse.Namespace) -> None:
    """Distil a data set into DIR/distilled.safetensors (and DIR/grid.png for images); test
    fresh models trained on it beside the same network trained on the full training split."""
    dataset = load_dataset(args.data, root=args.data_root, label=args.label)
    kind = defaults_for(dataset.is_image)
    archs = _archs(args.arch or [kind.arch], args.models, dataset, kind.models)
    options = {**kind.distiller(), **_given(
        args, ["steps", "epochs", "per_class", "method", "momentum", "init_lr", "outer_lr", "seed", "init", "memory"])}
    distiller = Distiller(archs, **options, theta0=args.theta0, soft_labels=args.soft_labels, compile=args.compile,
                          outer_lr_schedule=args.outer_lr_schedule,
                          offload=args.offload, offload_dir=None if args.offload_dir is None else str(args.offload_dir),
                          dtype=DTYPES[args.dtype], device=args.device, progress=not args.no_progress)
    start = time.perf_counter()
    state = args.out / CHECKPOINT_FILE
    try:
        data = distiller.fit(dataset.x_train, dataset.y_train, **_fit_options(args, dataset),
                             checkpoint=state, save_every=args.save_every, resume=args.resume)
    except DivergedError as error:
        raise _keep_diverged(error, args, dataset) from None
    seconds = time.perf_counter() - start
    data.config.update(_data_config(args, dataset))
    try:
        path = data.save(args.out / DATA_FILE)
    except OSError as error:
        raise OSError(f"{error}; the finished run's state is in {state}: rerun with --resume to write the "
                      "result") from error
    state.unlink(missing_ok=True)  # the result is written: nothing left to resume
    print(f"wrote {path}: x {list(data.x.shape)}, {data.lrs.numel()} learning rates, "
          f"final outer loss {data.history[-1]:.4f}, {seconds:.0f} s")
    if options["method"] == "auto":
        for said in dict.fromkeys(f"{plan.method}: {plan.why}; it stores {format_bytes(plan.predicted_peak_bytes)}"
                                  for plan in distiller.plans):
            print(f"method auto ran {said}")
    if dataset.is_image:
        print(f"wrote {data.save_grid(args.out / GRID_FILE)}")
    if args.inits:
        _report_accuracy(data, dataset, archs, args)


def _keep_diverged(error: DivergedError, args: argparse.Namespace, dataset: Dataset) -> FloatingPointError:
    """Write the last finite and the best state of a diverged distill beside its saved state;
    the error to report, in the options' words."""
    written = []
    for data in (*error.last, *error.best):
        data.config.update(_data_config(args, dataset))
        step, loss = data.config["outer_step"], data.config.get("outer_loss")
        path = data.save(args.out / KEPT_FILES[data.config["kept"]])
        written.append(f"{path} (outer step {step}" + ("" if loss is None else f", outer loss {loss:.4g}") + ")")
    now = error.last[0].config["outer_lr"]
    return FloatingPointError(
        f"distillation diverged at outer step {error.step}: {error.reason}. Kept {' and '.join(written)}, "
        f"both marked diverged, and the state in {error.checkpoint}: rerun with a lower --outer-lr (now {now}) "
        "and --resume to continue from it, or start over with a lower --init-lr, fewer --steps/--epochs "
        "or --dtype float64")


def _report_accuracy(data: DistilledData, dataset: Dataset, archs: list, args: argparse.Namespace) -> None:
    """Print, per distinct arch, the test accuracy of --inits fresh models trained on ``data`` and
    of one trained on the full training split (the data kind's baseline)."""
    baseline = defaults_for(dataset.is_image).baseline
    fixed = data.config.get("theta0") == "fixed"  # every model starts from the one fixed θ0
    inits, what = (1, "the model from the fixed θ0") if fixed else (args.inits, f"{args.inits} fresh models")
    for arch in {a.name: a for a in archs}.values():
        accs = summarize(distilled_accuracies(data, dataset, arch, None, inits=inits, device=args.device))
        full = baseline_accuracies(dataset, arch, inits=1, device=args.device, **baseline)[0]
        print(f"{arch.name}: {what} trained on the distilled data: test accuracy "
              f"{accs['mean']:.3f} ± {accs['std']:.3f}; trained on the full training split: {full:.3f}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Test fresh models trained on a distilled set; print a table, write evaluation.json."""
    path = args.dir / DATA_FILE if args.dir.is_dir() else args.dir
    data = DistilledData.load(path)
    name = args.data or data.config.get("data")
    if name is None:
        raise UsageError(f"{path} does not record its data set; pass --data")
    root = args.data_root or data.config.get("data_root")
    dataset = load_dataset(name, root=root, label=args.label or data.config.get("label"))
    default_archs = list(dict.fromkeys(data.config.get("archs", []))) if dataset.is_image else None
    names = args.test_arch or default_archs or ["1-layer", "2-layer", "4-layer"]
    archs = {arch: _arch("--test-arch", arch, dataset) for arch in names}
    cells = [(strategy, arch) for strategy in args.strategy for arch in archs]
    table: dict[str, dict] = {strategy: {} for strategy in args.strategy}
    result = {"data": name, "file": str(path), "inits": args.inits, "table": table}
    training = {**defaults_for(dataset.is_image).baseline, **_given(args, ["baseline_epochs"])}
    training["epochs"] = training.pop("baseline_epochs", training["epochs"])
    steps = {s: training_steps(data, s, total_epochs=args.total_epochs) for s in args.strategy}
    full = FULL_STEP_COST * baseline_steps(dataset, **training) if args.baseline else 0
    start = time.perf_counter()
    threads = nullcontext() if dataset.is_image else reproduce.one_thread()  # tiny MLPs: threads only contend
    with tqdm(total=sum(steps[s] for s, _ in cells) + full * len(archs), desc="evaluate", smoothing=0,
              bar_format=reproduce.BAR_FORMAT, leave=False, disable=args.no_progress) as bar, threads:
        for strategy, arch in cells:  # the bar's units: training steps, so its time left weighs s1–s3 > none
            bar.set_postfix_str(f"{args.inits} models, {strategy} on {arch}")
            table[strategy][arch] = summarize(distilled_accuracies(
                data, dataset, archs[arch], strategy, inits=args.inits, seed=args.seed,
                total_epochs=args.total_epochs, device=args.device))
            bar.update(steps[strategy])
        if args.baseline:
            result["baseline"] = {}
            for arch, factory in archs.items():
                bar.set_postfix_str(f"{args.baseline_inits} models, full data, {arch}")
                result["baseline"][arch] = summarize(baseline_accuracies(
                    dataset, factory, inits=args.baseline_inits, device=args.device, **training))
                bar.update(full)
    print(markdown_table(["strategy", *archs], strategy_table(table)))
    if args.baseline:
        print("\nfull-data baseline:\n" + baseline_table(result["baseline"]))
    written = write_json_atomic(path.parent / "evaluation.json", result)
    print(f"wrote {written} (test accuracy of {args.inits} models per strategy × architecture"
          + (", and the full-data baseline" if args.baseline else "") + f") in {time.perf_counter() - start:.1f} s")


def cmd_reproduce(args: argparse.Namespace) -> None:
    """Run the paper's protocol (or --quick) and write its results to --out."""
    fields = [f.name for f in dataclasses.fields(reproduce.Protocol)]
    protocol = reproduce.Protocol(**{**(reproduce.QUICK if args.quick else {}), **_given(args, fields)})
    results = reproduce.run(
        protocol, args.out, sweeps=args.sweeps, progress=not args.no_progress, jobs=args.jobs, quick=args.quick
    )
    drawn = ", ".join(results["figure_seconds"])
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'}, {drawn} and {args.out / 'distilled'}/ "
          f"in {results['seconds']:.0f} s" + (" (quick run: not the reproduction)" if args.quick else ""))


def cmd_batch(args: argparse.Namespace) -> None:
    """Run a job file (sharded over torchrun's ranks); rank 0 prints where the summary is."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with process_group():
        summary = run_batch(args.job, args.out, resume=args.resume, progress=not args.no_progress)
    if summary is None:
        return
    print(f"wrote {len(summary['jobs'])} jobs and {args.out / 'summary.md'} in {summary['seconds']:.0f} s")
    if summary["failed"]:
        failed = ", ".join(summary["failed"])
        raise FloatingPointError(f"{len(summary['failed'])} job(s) diverged: {failed}; see summary.md")


def cmd_profile(args: argparse.Namespace) -> None:
    """Profile memory and time versus n; write CSV and PNG, print the table (--plan: only the plans)."""
    try:   # every option checked (and any data sampled) before measuring: a bad one is a usage error
        problem = profiling.make_problem(
            args.arch, width=args.width, depth=args.depth, data=args.data, data_root=args.data_root,
            label=args.label, in_shape=args.in_shape, classes=args.classes, per_class=args.per_class,
            real_batch=args.real_batch)
    except DataNotFoundError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.plan:
        plans = profiling.plan_rows(args.n, args.methods, momentum=args.momentum, device=args.device,
                                    problem=problem, memory=args.memory, offload=args.offload)
        print(f"plan: {problem.describe()}, momentum {args.momentum}, on {args.device}, nothing run")
        print(profiling.format_plan(plans))
        return
    args.out.mkdir(parents=True, exist_ok=True)   # fail before measuring, not after
    offload = f", snapshots of {','.join(profiling.OFFLOADING)} offloaded to {args.offload}" if args.offload else ""
    print(f"profile: {problem.describe()}, momentum {args.momentum}, on {args.device}{offload}")
    points = len(args.n) * len(args.methods)
    with tqdm(total=points, desc="profile", unit="point") as bar:
        def seen(row: dict) -> None:
            bar.set_postfix_str(f"{row['method']} n={row['n']}" + (" skipped" if row["skipped"] else ""))
            bar.update()
        rows = profiling.profile(args.n, args.methods, momentum=args.momentum, device=args.device,
                                 on_row=seen, problem=problem, memory=args.memory, offload=args.offload)
    csv_path = profiling.write_csv(rows, args.out / "profile.csv")
    png_path = profiling.plot_profile(rows, args.out / "profile.png")
    print(profiling.format_table(rows))
    print(f"wrote {csv_path} and {png_path}")


COMMANDS = {"distill": cmd_distill, "evaluate": cmd_evaluate, "reproduce": cmd_reproduce, "batch": cmd_batch,
            "profile": cmd_profile}


# ---- every argument checked before any work (argparse's types check each value alone) ----


def _check_data(args: argparse.Namespace, needs_root: bool = True) -> None:
    """--data a known set or an existing path (a CSV one with --label), --data-root a folder (and
    given where the set's files are needed, unless ``needs_root`` is False: the distilled file may record it)."""
    names = SYNTHETIC + BUNDLED + IMAGES
    if args.data is not None and args.data not in names and not Path(args.data).exists():
        raise UsageError(f"--data: unknown data set {args.data!r}; expected one of {list(names)} or the path "
                         "of an existing CSV file, .npz file or image folder")
    if args.data is not None and args.data.lower().endswith(".csv") and not getattr(args, "label", None):
        raise UsageError(f"--data {args.data} is a CSV file: name its label column with --label")
    root = getattr(args, "data_root", None)
    if root is not None and not Path(root).is_dir():
        raise UsageError(f"--data-root: no folder at {root!r}")
    if needs_root and args.data in SOURCES and root is None and not os.environ.get(DATA_ENV):
        raise UsageError(f"--data {args.data} reads its files from a local folder (nothing is downloaded): "
                         f"give it with --data-root DIR or ${DATA_ENV}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file; expected a folder (it is created if missing)")


def _check_momentum(method: str | None, momentum: float | None) -> None:
    if method == "reversible" and not momentum:
        raise UsageError("--method reversible needs --momentum > 0 (it reverses momentum SGD)")


def _check_offload(args: argparse.Namespace) -> None:
    if args.offload and args.method in ("autograd", "reversible"):
        raise UsageError(f"--offload {args.offload} moves stored snapshots, which --method {args.method} has none of")
    if args.offload_dir is not None and args.offload != "disk":
        raise UsageError("--offload-dir goes with --offload disk")
    if args.offload_dir is not None and not args.offload_dir.is_dir():
        raise UsageError(f"--offload-dir: no folder at {str(args.offload_dir)!r}")


def _check_distill(args: argparse.Namespace) -> None:
    _check_data(args)
    _check_out(args.out)
    if args.arch and len(args.arch) > 1 and args.models not in (None, len(args.arch)):
        raise UsageError(f"--models {args.models} does not match the {len(args.arch)} --arch values")
    _check_momentum(args.method, args.momentum)
    _check_offload(args)
    if (args.out / CHECKPOINT_FILE).exists() and not args.resume:
        raise UsageError(f"{args.out / CHECKPOINT_FILE} holds the state of an unfinished run: pass --resume to "
                         "continue it, or delete it to start over")


def _check_evaluate(args: argparse.Namespace) -> None:
    _check_data(args, needs_root=False)
    path = args.dir / DATA_FILE if args.dir.is_dir() else args.dir
    if not path.is_file():
        kept = [str(path.parent / name) for name in KEPT_FILES.values() if (path.parent / name).is_file()]
        raise UsageError(f"no file at {str(path)!r}: expected a folder written by memdistill distill or a "
                         ".safetensors file" + (f" (that run diverged; it kept {' and '.join(kept)})" if kept else ""))
    if args.test_arch is not None and not args.test_arch:
        raise UsageError("--test-arch: expected comma-separated architectures, got none")
    unknown = [s for s in args.strategy if s not in STRATEGIES]
    if unknown or not args.strategy:
        raise UsageError(f"--strategy: unknown strategy {(unknown or [''])[0]!r}; expected some of "
                         f"{','.join(STRATEGIES)}")


def _check_reproduce(args: argparse.Namespace) -> None:
    _check_data(args)
    if args.data is not None and (args.data in IMAGES or args.data.lower().endswith(".npz")
                                  or Path(args.data).is_dir()):
        raise UsageError(f"--data {args.data}: reproduce runs the paper's protocol on tables (MLPs on feature "
                         f"vectors: {', '.join(SYNTHETIC + BUNDLED)} or a CSV file); distil images with "
                         "memdistill distill or batch")
    _check_out(args.out)
    _check_momentum(args.method, args.momentum)


def _check_batch(args: argparse.Namespace) -> None:
    """Also reads the job file (args.job): a bad one is refused before any work."""
    _check_out(args.out)
    try:
        args.job = jobfile.read(args.job_file)
    except UnicodeDecodeError as error:
        raise UsageError(f"{args.job_file}: not a UTF-8 text file ({error})") from None
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def _check_profile(args: argparse.Namespace) -> None:
    _check_data(args)
    if args.out is None and not args.plan:
        raise UsageError("--out is required (except with --plan, which writes nothing)")
    if args.out is not None:
        _check_out(args.out)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        raise UsageError(f"--methods: {f'unknown method(s) {unknown}' if unknown else 'none given'}; expected "
                         f"some of {','.join(METHODS)}")
    if "reversible" in args.methods and args.momentum <= 0:
        raise UsageError("--methods reversible needs --momentum > 0 (it reverses momentum SGD)")


CHECKS = {"distill": _check_distill, "evaluate": _check_evaluate, "reproduce": _check_reproduce,
          "batch": _check_batch, "profile": _check_profile}


# ---- the error boundary ----


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends) outside the outer loop's safe points."""

    signum = signal.SIGTERM


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` (the outer loop defers it to a safe point)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(argv: Sequence[str]) -> str:
    words = ["memdistill", *argv]
    return "continue with: " + shlex.join(words if "--resume" in words else [*words, "--resume"])


def _failure(error: BaseException, command: str, argv: Sequence[str]) -> tuple[int, str] | None:
    """(exit status, message) of an error the CLI reports in one message: 2 a bad argument (or a
    data set whose files are not where --data-root says), 1 a bad file, divergence, overflow,
    memory or a failed write, 128 + N signal N; None: a bug."""
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        message = f"interrupted by {signal.Signals(signum).name}"
        if isinstance(error, Interrupted):
            message += f" after outer step {error.step}; the state is saved in {error.checkpoint}"
        if isinstance(error, Interrupted) or command == "batch":
            message += "; " + _resume_hint(argv)
        return 128 + signum, message
    if isinstance(error, (UsageError, DataNotFoundError)):
        return 2, f"error: {error}"
    if isinstance(error, DivergedError):  # its message speaks Python; distill and batch say more
        return 1, (f"error: distillation diverged at outer step {error.step}: {error.reason}; lower --init-lr "
                   "or --outer-lr, or use fewer --steps/--epochs")
    if isinstance(error, (ValueError, OSError, FloatingPointError, OverflowError, MemoryError, torch.OutOfMemoryError)):
        return 1, f"error: {str(error) or type(error).__name__}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memdistill`` console script; returns the exit status (0).

    Every argument is checked before any work; an error is one message on stderr,
    ``memdistill COMMAND: error: ...``, and exit status 2 (a bad argument), 1 (any other
    failure the library reports) or 130/143 (SIGINT/SIGTERM; distill and batch save their state
    first); any other exception is a bug and shows its traceback, as every error does with --debug.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_raises():
            CHECKS[args.command](args)
            COMMANDS[args.command](args)
    except BaseException as error:
        failure = None if args.debug else _failure(error, args.command, argv)
        if failure is None:
            raise
        parser.exit(failure[0], f"memdistill {args.command}: {failure[1]}\n")
    return 0
