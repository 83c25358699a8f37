"""The ``memdistill`` command line: ``distill``, ``evaluate``, ``reproduce``, ``profile``, ``batch``.

memdistill distill --data moons --arch 2-layer --steps 40 --epochs 5 --models 3 --out DIR
memdistill evaluate DIR --test-arch 1-layer,2-layer,4-layer --strategy none,s1,s2,s3
memdistill reproduce --out DIR [--quick] [--sweeps]
memdistill profile --n 100,1000,10000 --methods autograd,replay,checkpoint,reversible --out DIR
memdistill batch JOB.toml --out DIR [--resume]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memdistill.apps import profiling, reproduce
from memdistill.apps.batch import process_group, run_batch
from memdistill.apps.report import baseline_table, markdown_table, strategy_table
from memdistill.atomic import write_json_atomic
from memdistill.data import Dataset, load_dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import baseline_accuracies, distilled_accuracies, summarize
from memdistill.distill.training import STRATEGIES
from memdistill.engine.validation import METHODS
from memdistill.models import mlp

DATA_FILE = "distilled.safetensors"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_data_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data",
        default=default,
        help="moons, circles, blobs, breast_cancer, iris, wine, digits or a CSV path"
        + (f" (default: {default})" if default else " (default: the one distilled)"),
    )
    parser.add_argument("--label", help="label column of a CSV file")


DISTILL_OPTIONS = {
    "steps": (int, "internal steps s per epoch"),
    "epochs": (int, "internal epochs e"),
    "per_class": (int, "synthetic objects per class per step"),
    "momentum": (float, "inner SGD momentum"),
    "init_lr": (float, "initial learned learning rate"),
    "outer_lr": (float, "Adam learning rate"),
    "outer_epochs": (int, "passes over the real data"),
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


def _add_options(parser: argparse.ArgumentParser, options: dict[str, tuple[type, str]]) -> None:
    """``--field-name`` options (default None: the protocol's value, shown in the help)."""
    paper = reproduce.Protocol()
    for field, (kind, text) in options.items():
        flag = "--" + field.replace("_", "-")
        parser.add_argument(flag, type=kind, help=f"{text} (default {getattr(paper, field)})")


def _add_distill_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by distill and reproduce (reproduce's defaults depend on --quick)."""
    _add_options(parser, DISTILL_OPTIONS)
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
        help="internal model architecture: N-layer or mlp[w1,w2,...]; repeat for mixed models (default 2-layer)",
    )
    distill.add_argument(
        "--models",
        type=int,
        help="internal models m (default: 3 copies of a single --arch, else one per --arch)",
    )
    _add_distill_options(distill)
    distill.add_argument("--soft-labels", action="store_true", help="also learn soft labels")
    distill.add_argument(
        "--dtype", choices=list(DTYPES), default="float32", help="float dtype (default float32)"
    )
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
        default=["1-layer", "2-layer", "4-layer"],
        help="comma-separated architectures (default 1-layer,2-layer,4-layer)",
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
        default=paper.baseline_epochs,
        help=f"baseline gradient steps (default {paper.baseline_epochs})",
    )
    _add_data_options(evaluate, None)

    repro = commands.add_parser(
        "reproduce",
        help="run the paper's protocol, write results.json, report.md and figures",
        description="Run the paper's experiments 2-5 (and the Fig. 4 sweeps with --sweeps); paper settings by default.",
    )
    repro.add_argument("--out", required=True, type=Path, help="output directory")
    repro.add_argument(
        "--quick",
        action="store_true",
        help="a reduced protocol of about 2 minutes: "
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
        description="Measure one hypergradient of a 2-W-...-W-1 ReLU MLP per (method, n), each CPU point "
        "in a fresh process (peak RSS growth; CUDA: max_memory_allocated). A point whose memory, "
        "extrapolated from the method's last measured point, would not fit is skipped and said so. "
        "Writes OUT/profile.csv and OUT/profile.png (log-log) and prints a table.",
    )
    prof.add_argument("--n", type=_int_list, default=[100, 1000, 10000], help="inner steps (default 100,1000,10000)")
    prof.add_argument("--methods", type=_comma_list, default=list(METHODS), help=f"default {','.join(METHODS)}")
    prof.add_argument("--width", type=int, default=256, help="hidden width (default 256)")
    prof.add_argument("--depth", type=int, default=3, help="hidden layers (default 3: the paper's 4-layer MLP)")
    prof.add_argument("--momentum", type=float, default=0.9, help="inner momentum, > 0 for reversible (default 0.9)")
    prof.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
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


def _archs(names: Sequence[str], models: int | None, dataset: Dataset) -> list:
    """The internal models: one name replicated ``models`` (3) times, or one per name."""
    factories = [mlp(name, dataset.in_features, dataset.out_features) for name in names]
    if len(factories) == 1:
        return factories * (3 if models is None else models)
    if models not in (None, len(factories)):
        raise ValueError(f"--models {models} does not match the {len(factories)} --arch values")
    return factories


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The options among ``names`` given on the command line (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def cmd_distill(args: argparse.Namespace) -> None:
    """Distil a data set and write DIR/distilled.safetensors; print a quick test accuracy."""
    dataset = load_dataset(args.data, label=args.label)
    archs = _archs(args.arch or ["2-layer"], args.models, dataset)
    options = _given(
        args, ["steps", "epochs", "per_class", "method", "momentum", "init_lr", "outer_lr", "seed"]
    )
    distiller = Distiller(
        archs,
        **options,
        soft_labels=args.soft_labels,
        dtype=DTYPES[args.dtype],
        progress=not args.no_progress,
    )
    fit = _given(args, ["outer_epochs", "batch_size"])
    data = distiller.fit(dataset.x_train, dataset.y_train, **fit)
    data.config.update(data=args.data, label=args.label)
    path = data.save(args.out / DATA_FILE)
    print(
        f"wrote {path}: x {list(data.x.shape)}, {data.lrs.numel()} learning rates, final outer loss {data.history[-1]:.4f}"
    )
    for name in dict.fromkeys(data.config["archs"]):
        factory = mlp(name, dataset.in_features, dataset.out_features)
        acc = distilled_accuracies(data, dataset, factory, None)[0]
        print(f"a fresh {name} trained on it: test accuracy {acc:.3f}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Test fresh models trained on a distilled set; print a table, write evaluation.json."""
    path = args.dir / DATA_FILE if args.dir.is_dir() else args.dir
    data = DistilledData.load(path)
    name = args.data or data.config.get("data")
    if name is None:
        raise ValueError(f"evaluate: {path} does not record its data set; pass --data")
    dataset = load_dataset(name, label=args.label or data.config.get("label"))
    archs = {arch: mlp(arch, dataset.in_features, dataset.out_features) for arch in args.test_arch}
    unknown = [s for s in args.strategy if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"evaluate: unknown strategy {unknown[0]!r}; expected one of {list(STRATEGIES)}")
    table = {
        strategy: {
            arch: summarize(
                distilled_accuracies(
                    data,
                    dataset,
                    factory,
                    strategy,
                    inits=args.inits,
                    seed=args.seed,
                    total_epochs=args.total_epochs,
                )
            )
            for arch, factory in archs.items()
        }
        for strategy in args.strategy
    }
    result = {"data": name, "file": str(path), "inits": args.inits, "table": table}
    print(markdown_table(["strategy", *archs], strategy_table(table)))
    if args.baseline:
        result["baseline"] = {
            arch: summarize(
                baseline_accuracies(dataset, factory, inits=args.baseline_inits, epochs=args.baseline_epochs)
            )
            for arch, factory in archs.items()
        }
        print("\nfull-data baseline:\n" + baseline_table(result["baseline"]))
    write_json_atomic(path.parent / "evaluation.json", result)


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
    args.out.mkdir(parents=True, exist_ok=True)   # fail before measuring, not after
    points = len(args.n) * len(args.methods)
    with tqdm(total=points, desc="profile", unit="point") as bar:
        def seen(row: dict) -> None:
            bar.set_postfix_str(f"{row['method']} n={row['n']}" + (" skipped" if row["skipped"] else ""))
            bar.update()
        rows = profiling.profile(args.n, args.methods, width=args.width, depth=args.depth,
                                 momentum=args.momentum, device=args.device, on_row=seen)
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
