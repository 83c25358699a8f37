"""Markdown rendering of evaluation results (the tables of report.md and of the CLI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cell(summary: Mapping[str, Any]) -> str:
    """``"0.912 ± 0.010"`` from ``{"mean": .., "std": ..}``."""
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def interval(summary: Mapping[str, Any]) -> str:
    """``"[0.905, 0.919]"`` from ``{"ci95": [low, high]}``."""
    low, high = summary["ci95"]
    return f"[{low:.3f}, {high:.3f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def strategy_table(
    by_strategy: Mapping[str, Mapping[str, Mapping[str, Any]]], first: Sequence[str] = ()
) -> list[list[str]]:
    """Rows ``[*first, strategy, mean ± std per test architecture…]`` of {strategy: {arch: summary}}."""
    return [
        [*first, strategy, *(cell(s) for s in by_arch.values())] for strategy, by_arch in by_strategy.items()
    ]


def baseline_table(baseline: Mapping[str, Mapping[str, Any]]) -> str:
    """Architecture | mean ± std | 95% CI of the full-data baseline."""
    rows = [[arch, cell(s), interval(s)] for arch, s in baseline.items()]
    return markdown_table(["architecture", "accuracy (mean ± std)", "95% CI"], rows)


QUICK_BANNER = (
    "> **Quick run (`--quick`) — not the reproduction.** A reduced protocol (fewer restarts, "
    "steps, outer epochs and test models) that checks the pipeline end to end in seconds; its "
    "numbers show none of the paper's effects. Run without `--quick` for the paper's protocol."
)


def timing_line(results: Mapping[str, Any]) -> str:
    """``Total time 356 s (wall: baseline 3 s, distill 250 s, …; summed over processes: …).``"""
    def seconds(by_phase: Mapping[str, float]) -> str:
        return ", ".join(f"{phase} {value:.0f} s" for phase, value in by_phase.items())

    line = f"Total time {results['seconds']:.0f} s"
    if "phases" in results:
        line += f" (wall: {seconds(results['phases'])}; summed over processes: {seconds(results.get('timing', {}))})"
    elif "timing" in results:
        line += f" ({seconds(results['timing'])})"
    return line + "."


def render_report(results: Mapping[str, Any], figures: Sequence[str]) -> str:
    """report.md: a banner if ``results["quick"]``, the config, the baseline, Table 1, Table 2,
    the sweeps and the figures."""
    config = results["config"]
    test_archs = list(results["baseline"])
    table1 = [row for source, table in results["table1"].items() for row in strategy_table(table, [source])]
    parts = [
        "# memdistill reproduction" + (" (quick run)" if results.get("quick") else ""),
        *([QUICK_BANNER] if results.get("quick") else []),
        f"Data `{config['data']}`; {config['restarts']} restarts; s = {config['steps']}, "
        f"e = {config['epochs']}, {config['per_class']} per class, m = {config['models']}, "
        f"{config['outer_epochs']} outer epochs of batch {config['batch_size']}, method "
        f"`{config['method']}`; strategies train {config['total_epochs']} epochs; "
        f"{config['eval_inits']} test models per restart. " + timing_line(results),
        "Cells: test accuracy, mean ± std over restarts × test initialisations. Strategies: none = "
        "the learned rates once; s1 = a standard schedule (the learned rates ignored); s2 = the "
        "learned rates repeated, decaying; s3 = the learned rates, then their last epoch repeated, decaying.",
        f"## Full-data baseline ({config['baseline_inits']} initialisations, "
        f"{config['baseline_epochs']} full-batch gradient steps at lr {config['baseline_lr']})",
        baseline_table(results["baseline"]),
        "## Table 1: data distilled for one architecture, tested on each",
        markdown_table(["distilled for", "strategy", *test_archs], table1),
        "## Table 2: data distilled with one model of each architecture (m = 3)",
        markdown_table(["strategy", *test_archs], strategy_table(results["table2"])),
    ]
    if "sweeps" in results:
        parts.append("## Hyper-parameter sweeps (paper Fig. 4)")
        for name, points in results["sweeps"].items():
            rows = [[value, cell(s), interval(s)] for value, s in points.items()]
            parts.append(markdown_table([f"internal {name}", "accuracy", "95% CI"], rows))
    parts.append("## Figures")
    parts += [f"![{name}]({name})" for name in figures]
    return "\n\n".join(parts) + "\n"
