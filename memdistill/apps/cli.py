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
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memdistill.apps import profiling, reproduce
from memdistill.apps.batch import process_group, run_batch
from memdistill.apps.report import baseline_table, markdown_table, strategy_table
from memdistill.atomic import write_json_atomic
from memdistill.data import BUNDLED, IMAGES, SYNTHETIC, Dataset, load_dataset
from memdistill.distill.defaults import IMAGE, TABULAR, defaults_for
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import baseline_accuracies, distilled_accuracies, summarize
from memdistill.distill.outer import INITS, THETA0
from memdistill.distill.training import STRATEGIES
from memdistill.engine.validation import METHODS
from memdistill.models import check_arch

DATA_FILE = "distilled.safetensors"
GRID_FILE = "grid.png"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


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
    "steps": (int, "internal steps s per epoch"),
    "epochs": (int, "internal epochs e"),
    "per_class": (int, "synthetic objects per class per step"),
    "momentum": (float, "inner SGD momentum"),
    "init_lr": (float, "initial learned learning rate"),
    "outer_lr": (float, "Adam learning rate"),
    "outer_epochs": (int, "passes over the real data"),
    "outer_steps": (int, "outer steps (overrides --outer-epochs)"),
    "batch_size": (int, "real minibatch size"),
    "seed": (int, "random seed"),
}
"""Protocol fields settable from distill and reproduce: field -> (type, help)."""

REPRODUCE_OPTIONS = {
    "data": (str, "data set"),
    "restarts": (int, "distillations per source"),
    "models": (int, "internal models m of Table 1"),
    "total_epochs": (int, "epochs of strategies s1-s3"),
    "eval_inits": (int, "test models per restart"),
    "baseline_inits": (int, "full-data models"),
    "baseline_epochs": (int, "full-data gradient steps"),
}
"""Protocol fields settable from reproduce only."""


def _add_options(parser: argparse.ArgumentParser, options: dict[str, tuple[type, str]], images: bool = False) -> None:
    """``--field-name`` options (default None: the protocol's value, shown in the help; with
    ``images`` also the image default where it differs)."""
    paper = reproduce.Protocol()
    for field, (kind, text) in options.items():
        flag = "--" + field.replace("_", "-")
        default = getattr(paper, field, getattr(TABULAR, field, None))
        image = getattr(IMAGE, field, default)
        shown = f"{default}; images {image}" if images and image != default else f"{default}"
        parser.add_argument(flag, type=kind, help=f"{text} (default {shown})")


def _add_distill_options(parser: argparse.ArgumentParser, images: bool = False) -> None:
    """Options shared by distill and reproduce (reproduce's defaults depend on --quick)."""
    _add_options(parser, DISTILL_OPTIONS if images else
                 {k: v for k, v in DISTILL_OPTIONS.items() if k != "outer_steps"}, images)
    parser.add_argument("--method", choices=METHODS, help="hypergradient method (default checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three commands."""
    parser = argparse.ArgumentParser(
        prog="memdistill", description="Dataset distillation with exact, memory-bounded hypergradients."
    )
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
        type=int,
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
    distill.add_argument(
        "--dtype", choices=list(DTYPES), default="float32", help="float dtype (default float32)"
    )
    distill.add_argument(
        "--inits", type=int, default=10, help="fresh models tested on the result (default 10; 0: none)"
    )
    _add_device_option(distill)
    distill.add_argument("--out", required=True, type=Path, help="output directory")

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
        "--inits", type=int, default=10, help="fresh models per architecture and strategy (default 10)"
    )
    evaluate.add_argument(
        "--total-epochs",
        type=int,
        default=paper.total_epochs,
        help=f"epochs of strategies s1-s3 (default {paper.total_epochs})",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the first model (default 0)")
    evaluate.add_argument(
        "--baseline", action="store_true", help="also train on all the training data (full-data baseline)"
    )
    evaluate.add_argument(
        "--baseline-inits",
        type=int,
        default=paper.baseline_inits,
        help=f"baseline models (default {paper.baseline_inits})",
    )
    evaluate.add_argument(
        "--baseline-epochs",
        type=int,
        help=f"baseline epochs (default: {paper.baseline_epochs} full-batch steps for tables, "
        f"{IMAGE.baseline['epochs']} epochs of batch {IMAGE.baseline['batch_size']} for images)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_data_options(evaluate, None)
    _add_device_option(evaluate)

    repro = commands.add_parser(
        "reproduce",
        help="run the paper's protocol, write results.json, report.md and figures",
        description="Run the paper's experiments 2-5 (and the Fig. 4 sweeps with --sweeps); paper settings by default.",
    )
    repro.add_argument("--out", required=True, type=Path, help="output directory")
    repro.add_argument(
        "--quick",
        action="store_true",
        help="a reduced protocol of about 15 seconds: "
        + ", ".join(f"{k}={v}" for k, v in reproduce.QUICK.items()),
    )
    repro.add_argument(
        "--sweeps", action="store_true", help="also run the hyper-parameter sweeps (paper Fig. 4)"
    )
    repro.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="distillations run at once in separate processes (default 1; results do not depend on it)",
    )
    _add_options(repro, REPRODUCE_OPTIONS)
    _add_distill_options(repro)

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
        "--threads", type=int, help="torch threads per process (default torch's; results depend on it)"
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
    prof.add_argument("--methods", type=_comma_list, default=list(METHODS), help=f"default {','.join(METHODS)}")
    prof.add_argument("--arch", help=ARCH_HELP + " (default: the MLP of --width and --depth)")
    prof.add_argument("--width", type=int, help="hidden width of the default MLP (default 256)")
    prof.add_argument("--depth", type=int, help="hidden layers of the default MLP (default 3: the paper's 4-layer MLP)")
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
    prof.add_argument("--classes", type=int, help="classes of --in-shape inputs (default 10 for images, else 2)")
    prof.add_argument(
        "--per-class", type=int,
        help="synthetic objects per class per step, b = per-class x classes (default 4, i.e. b = 8 for 2 classes; "
        "images 1)",
    )
    prof.add_argument("--real-batch", type=int, help="real inputs of the outer loss (default 64)")
    prof.add_argument("--momentum", type=float, default=0.9, help="inner momentum, > 0 for reversible (default 0.9)")
    prof.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                      help="cpu, cuda or cuda:N (default cuda where available)")
    prof.add_argument("--out", required=True, type=Path, help="output directory")
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
    factories = [check_arch(name, dataset.in_shape, dataset.classes) for name in names]
    if models is not None and models < 1:
        raise ValueError(f"--models must be >= 1, got {models}")
    if len(factories) == 1:
        return factories * (default if models is None else models)
    if models not in (None, len(factories)):
        raise ValueError(f"--models {models} does not match the {len(factories)} --arch values")
    return factories


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
        args, ["steps", "epochs", "per_class", "method", "momentum", "init_lr", "outer_lr", "seed", "init"])}
    if args.inits < 0:
        raise ValueError(f"--inits must be >= 0, got {args.inits}")
    distiller = Distiller(archs, **options, theta0=args.theta0, soft_labels=args.soft_labels,
                          dtype=DTYPES[args.dtype], device=args.device, progress=not args.no_progress)
    start = time.perf_counter()
    data = distiller.fit(dataset.x_train, dataset.y_train, **_fit_options(args, dataset))
    seconds = time.perf_counter() - start
    data.config.update(_data_config(args, dataset))
    path = data.save(args.out / DATA_FILE)
    print(f"wrote {path}: x {list(data.x.shape)}, {data.lrs.numel()} learning rates, "
          f"final outer loss {data.history[-1]:.4f}, {seconds:.0f} s")
    if dataset.is_image:
        print(f"wrote {data.save_grid(args.out / GRID_FILE)}")
    if args.inits:
        _report_accuracy(data, dataset, archs, args)


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
        raise ValueError(f"evaluate: {path} does not record its data set; pass --data")
    root = args.data_root or data.config.get("data_root")
    dataset = load_dataset(name, root=root, label=args.label or data.config.get("label"))
    default_archs = list(dict.fromkeys(data.config.get("archs", []))) if dataset.is_image else None
    names = args.test_arch or default_archs or ["1-layer", "2-layer", "4-layer"]
    archs = {arch: check_arch(arch, dataset.in_shape, dataset.classes) for arch in names}
    unknown = [s for s in args.strategy if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"evaluate: unknown strategy {unknown[0]!r}; expected one of {list(STRATEGIES)}")
    for option in ("inits", "total_epochs", "baseline_inits", "baseline_epochs"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    cells = [(strategy, arch) for strategy in args.strategy for arch in archs]
    table: dict[str, dict] = {strategy: {} for strategy in args.strategy}
    for strategy, arch in tqdm(cells, desc="evaluate", unit="cell", leave=False, disable=args.no_progress):
        table[strategy][arch] = summarize(distilled_accuracies(
            data, dataset, archs[arch], strategy, inits=args.inits, seed=args.seed,
            total_epochs=args.total_epochs, device=args.device))
    result = {"data": name, "file": str(path), "inits": args.inits, "table": table}
    print(markdown_table(["strategy", *archs], strategy_table(table)))
    if args.baseline:
        training = {**defaults_for(dataset.is_image).baseline, **_given(args, ["baseline_epochs"])}
        training["epochs"] = training.pop("baseline_epochs", training["epochs"])
        result["baseline"] = {
            arch: summarize(baseline_accuracies(dataset, factory, inits=args.baseline_inits, device=args.device,
                                                **training))
            for arch, factory in archs.items()
        }
        print("\nfull-data baseline:\n" + baseline_table(result["baseline"]))
    print(f"wrote {write_json_atomic(path.parent / 'evaluation.json', result)}")


def cmd_reproduce(args: argparse.Namespace) -> None:
    """Run the paper's protocol (or --quick) and write its results to --out."""
    fields = [f.name for f in dataclasses.fields(reproduce.Protocol)]
    protocol = reproduce.Protocol(**{**(reproduce.QUICK if args.quick else {}), **_given(args, fields)})
    results = reproduce.run(
        protocol, args.out, sweeps=args.sweeps, progress=not args.no_progress, jobs=args.jobs
    )
    print(
        f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and figures in {results['seconds']:.0f} s"
    )


def cmd_batch(args: argparse.Namespace) -> None:
    """Run a job file (sharded over torchrun's ranks); rank 0 prints where the summary is."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"batch: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    with process_group():
        summary = run_batch(args.job_file, args.out, resume=args.resume, progress=not args.no_progress)
    if summary is None:
        return
    print(f"wrote {len(summary['jobs'])} jobs and {args.out / 'summary.md'} in {summary['seconds']:.0f} s")
    if summary["failed"]:
        failed = ", ".join(summary["failed"])
        raise FloatingPointError(f"{len(summary['failed'])} job(s) diverged: {failed}; see summary.md")


def cmd_profile(args: argparse.Namespace) -> None:
    """Profile memory and time versus n; write CSV and PNG, print the table."""
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"profile: unknown method(s) {unknown}; expected some of {list(METHODS)}")
    if "reversible" in args.methods and args.momentum <= 0:
        raise ValueError("profile: method 'reversible' needs --momentum > 0")
    problem = profiling.make_problem(   # every option checked (and any data sampled) before measuring
        args.arch, width=args.width, depth=args.depth, data=args.data, data_root=args.data_root,
        label=args.label, in_shape=args.in_shape, classes=args.classes, per_class=args.per_class,
        real_batch=args.real_batch)
    args.out.mkdir(parents=True, exist_ok=True)   # fail before measuring, not after
    print(f"profile: {problem.describe()}, momentum {args.momentum}, on {args.device}")
    points = len(args.n) * len(args.methods)
    with tqdm(total=points, desc="profile", unit="point") as bar:
        def seen(row: dict) -> None:
            bar.set_postfix_str(f"{row['method']} n={row['n']}" + (" skipped" if row["skipped"] else ""))
            bar.update()
        rows = profiling.profile(args.n, args.methods, momentum=args.momentum, device=args.device,
                                 on_row=seen, problem=problem)
    csv_path = profiling.write_csv(rows, args.out / "profile.csv")
    png_path = profiling.plot_profile(rows, args.out / "profile.png")
    print(profiling.format_table(rows))
    print(f"wrote {csv_path} and {png_path}")


COMMANDS = {"distill": cmd_distill, "evaluate": cmd_evaluate, "reproduce": cmd_reproduce, "batch": cmd_batch,
            "profile": cmd_profile}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memdistill`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as error:
        parser.exit(2, f"memdistill {args.command}: error: {error}\n")
    except FloatingPointError as error:
        parser.exit(1, f"memdistill {args.command}: {error}\n")
    return 0
