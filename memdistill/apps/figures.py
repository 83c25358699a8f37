"""PNG figures of a reproduction (matplotlib's object API: no pyplot, no global state).

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` whose title says what it shows
(``note``, e.g. :data:`QUICK_NOTE`, is added to it), with labelled axes and a legend for its
symbols; :func:`save_png` renders it once and writes it atomically. The 2-D plots (data,
decision boundaries, synthetic objects) need 2 features.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FormatStrFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    ScalarFormatter,
)
from torch import nn

from memdistill.atomic import write_bytes_atomic
from memdistill.data import Dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.evaluation import predict

CMAP = "coolwarm"
QUICK_NOTE = "quick run — not the reproduction"
"""Added to every figure title of ``reproduce --quick``: its numbers show none of the paper's effects."""

STRATEGY_NOTES = {
    "none": "none: the learned rates η̃, once (n = s·e steps)",
    "s1": "s1: a standard schedule (0.3, ×1.1 per epoch for 10 epochs, then ×0.95), η̃ ignored",
    "s2": "s2: η̃ repeated, ×0.98 per repetition",
    "s3": "s3: η̃ once, then its last epoch repeated, ×0.98 each time",
}
"""Legend text of each training strategy (memdistill.distill.training; s1–s3 run ``total_epochs``)."""

STRATEGY_STYLE = {"none": ("o", "C0"), "s1": ("s", "C1"), "s2": ("^", "C2"), "s3": ("D", "C3")}


def save_png(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` once (its own layout, no tight-bbox second pass) to PNG bytes; write them
    atomically to ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return write_bytes_atomic(path, buffer.getvalue())


def _figure(
    width: float, height: float, *, note: str = "", top: float = 0.6, bottom: float = 0.55, left: float = 0.75,
    right: float = 0.2, wspace: float = 0.2, hspace: float = 0.35
) -> Figure:
    """An empty figure ``width × height`` inches (plus a line for ``note``) whose subplots leave
    fixed margins (inches) for the title (top), axis labels and legend (bottom, left): one render,
    no layout solver (which costs seconds for a grid of axes)."""
    extra = 0.25 if note else 0.0
    height, top = height + extra, top + extra
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                           top=1 - top / height, wspace=wspace, hspace=hspace)
    return figure


def _title(figure: Figure, text: str, note: str = "") -> None:
    """The figure's title: ``text``, and ``note`` in red on a second line."""
    figure.suptitle(text + (f"\n({note})" if note else ""), color="firebrick" if note else "black")


def class_colors(classes: int) -> list:
    """One colour per class id, evenly spaced on :data:`CMAP` (blue … red)."""
    cmap = colormaps[CMAP]
    return [cmap(v) for v in np.linspace(0.0, 1.0, max(classes, 2))]


def class_handles(dataset: Dataset, **style) -> list[Line2D]:
    """Legend handles ``class <name>`` in each class's colour (scatter-marker style)."""
    colors = class_colors(dataset.classes)
    return [
        Line2D([], [], ls="", marker=style.get("marker", "o"), color=colors[c],
               markeredgecolor=style.get("edge", colors[c]), label=f"class {name}")
        for c, name in enumerate(dataset.class_names)
    ]


def _scatter_classes(axis, x: torch.Tensor, y: torch.Tensor, classes: int, **style) -> None:
    colors = np.asarray(class_colors(classes))
    axis.scatter(x[:, 0], x[:, 1], c=colors[y.long().numpy()], **style)


def _feature_labels(axis) -> None:
    axis.set_xlabel("feature 1 (standardised)")
    axis.set_ylabel("feature 2 (standardised)")


def _panel_title(axis, text: str) -> None:
    """A small title above a panel of a grid (a plain text: ``set_title`` would measure the
    panel's tick labels again at every draw, the costliest part of a grid of panels)."""
    axis.text(0.5, 1.02, text, transform=axis.transAxes, ha="center", va="bottom", fontsize=9)


def _shared_limits(axis, x0: float, x1: float, y0: float, y1: float) -> None:
    """Limits and at most 5 ticks per side for every panel sharing ``axis``'s x and y axes."""
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)
    axis.xaxis.set_major_locator(MaxNLocator(5))
    axis.yaxis.set_major_locator(MaxNLocator(5))


def padded_bounds(points: torch.Tensor, pad: float = 0.08) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) holding every point [N, 2], each side widened by ``pad`` of its span."""
    low, high = points.min(0).values.double(), points.max(0).values.double()
    margin = (high - low).clamp_min(1e-3) * pad
    (x0, y0), (x1, y1) = (low - margin).tolist(), (high + margin).tolist()
    return x0, x1, y0, y1


def plot_dataset(dataset: Dataset, *, note: str = "") -> Figure:
    """The train (dots) and test (crosses) points, coloured by class."""
    figure = _figure(6.0, 4.8, note=note, left=0.8)
    axis = figure.subplots()
    _scatter_classes(axis, dataset.x_train, dataset.y_train, dataset.classes, s=8)
    _scatter_classes(axis, dataset.x_test, dataset.y_test, dataset.classes, s=14, marker="x", linewidths=0.8)
    _title(figure, f"{dataset.name}: {len(dataset.x_train)} train (dots), {len(dataset.x_test)} test (crosses)", note)
    _feature_labels(axis)
    axis.legend(handles=class_handles(dataset), loc="best", fontsize=8)
    return figure


def plot_boundaries(
    dataset: Dataset, rows: Mapping[str, Sequence[tuple[str, nn.Module, float]]], *, note: str = ""
) -> Figure:
    """Decision regions (shaded: the predicted class) of models over the test points (dots: the
    true class).

    Args:
      rows: row title (how the models were trained, e.g. "full data") → list of (architecture,
        model, test accuracy), one panel each.
    """
    columns = max(len(panels) for panels in rows.values())
    figure = _figure(3.3 * columns + 0.9, 2.9 * len(rows) + 2.1, note=note, top=0.8, bottom=1.3, hspace=0.3)
    axes = figure.subplots(len(rows), columns, squeeze=False, sharex=True, sharey=True)
    x0, x1, y0, y1 = padded_bounds(torch.cat([dataset.x_train, dataset.x_test]))
    grid_x, grid_y = np.meshgrid(np.linspace(x0, x1, 150), np.linspace(y0, y1, 150))
    grid = torch.tensor(np.stack([grid_x.ravel(), grid_y.ravel()], 1), dtype=torch.float32)
    colors = class_colors(dataset.classes)
    for row, (title, panels) in enumerate(rows.items()):
        for column, (arch, model, acc) in enumerate(panels):
            axis = axes[row, column]
            regions = predict(model, grid).reshape(grid_x.shape).numpy()
            axis.contourf(grid_x, grid_y, regions, levels=np.arange(dataset.classes + 1) - 0.5,
                          colors=colors[: dataset.classes], alpha=0.25)
            _scatter_classes(axis, dataset.x_test, dataset.y_test, dataset.classes, s=4)
            _panel_title(axis, f"{arch}, {title} (test acc {acc:.3f})")
        axes[row, 0].set_ylabel("feature 2")
    _shared_limits(axes[0, 0], x0, x1, y0, y1)
    for axis in axes[-1]:
        axis.set_xlabel("feature 1")
    _title(figure, "Decision regions of the median-accuracy model: trained on full vs distilled data", note)
    regions = [Patch(color=colors[c], alpha=0.25, label=f"predicted {name}")
               for c, name in enumerate(dataset.class_names)]
    figure.legend(handles=[*regions, *class_handles(dataset)], loc="lower center",
                  ncols=2 * dataset.classes, fontsize=8, title="shading: predicted class; dots: test points, true class",
                  title_fontsize=8)
    return figure


def synthetic_steps(steps: int, shown: int = 4) -> list[int]:
    """1-based steps to show: evenly spaced from 1 to s (1, 14, 27, 40 for s = 40)."""
    return sorted({int(round(v)) for v in np.linspace(1, steps, min(shown, steps))})


def hard_labels(data: DistilledData) -> torch.Tensor:
    """Class ids [s, b] of the synthetic objects (argmax of soft labels, target > 0.5 for one logit)."""
    if not data.y.is_floating_point():
        return data.y.long()
    return data.y.argmax(-1) if data.y.ndim == 3 else (data.y > 0.5).long()


def plot_synthetic(
    dataset: Dataset, sources: Mapping[str, DistilledData], *, title: str | None = None, note: str = ""
) -> Figure:
    """Synthetic objects of steps 1, 14, 27, 40 (or evenly spaced) of each distilled set, over the
    real training points (grey); one row per set, the same axes everywhere."""
    first = next(iter(sources.values()))
    steps = synthetic_steps(first.steps)
    figure = _figure(2.8 * len(steps) + 0.9, 2.7 * len(sources) + 1.75, note=note, top=0.8, bottom=0.95, hspace=0.3)
    axes = figure.subplots(len(sources), len(steps), squeeze=False, sharex=True, sharey=True)
    shown = [data.x[step - 1].reshape(-1, 2) for data in sources.values() for step in steps]
    x0, x1, y0, y1 = padded_bounds(torch.cat([dataset.x_train, *shown]))
    for row, (name, data) in enumerate(sources.items()):
        labels = hard_labels(data)
        for column, step in enumerate(steps):
            axis = axes[row, column]
            axis.plot(dataset.x_train[:, 0], dataset.x_train[:, 1], ".", color="lightgrey", ms=2)
            _scatter_classes(axis, data.x[step - 1], labels[step - 1], dataset.classes, s=36, edgecolors="k")
            _panel_title(axis, f"{name}: step {step} (η̃ = {float(data.lrs[step - 1]):.2f})")
        axes[row, 0].set_ylabel("feature 2")
    _shared_limits(axes[0, 0], x0, x1, y0, y1)
    for axis in axes[-1]:
        axis.set_xlabel("feature 1")
    _title(figure, title or f"Synthetic objects x̃ of inner steps {', '.join(map(str, steps))} (of s = {first.steps})",
           note)
    real = Line2D([], [], ls="", marker="o", color="lightgrey", label="real training points")
    figure.legend(handles=[*class_handles(dataset, edge="k"), real], loc="lower center",
                  ncols=dataset.classes + 1, fontsize=8)
    return figure


def plot_lrs(sources: Mapping[str, DistilledData], *, title: str | None = None, note: str = "") -> Figure:
    """Learned learning rate η̃_k of every inner step k (integer steps), one line per distilled
    set; dotted lines and labels mark where each internal epoch starts."""
    figure = _figure(8.0, 4.6, note=note, left=0.9)
    axis = figure.subplots()
    for name, data in sources.items():
        marker = "." if data.lrs.numel() <= 60 else None  # markers only while they stay apart
        axis.plot(np.arange(1, data.lrs.numel() + 1), data.lrs.double().numpy(), marker=marker, lw=1, label=name)
    first = next(iter(sources.values()))
    for epoch in range(1, first.epochs):
        axis.axvline(epoch * first.steps + 0.5, color="grey", ls=":", lw=1)
    axis.set_xlim(0.5, first.lrs.numel() + 0.5)
    for epoch in range(first.epochs):
        axis.text(epoch * first.steps + 1, 1.0, f" epoch {epoch + 1}", transform=axis.get_xaxis_transform(),
                  va="top", fontsize=8, color="grey")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(f"inner step k (s = {first.steps} steps per epoch × {first.epochs} epochs)")
    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    rates = torch.cat([data.lrs.double() for data in sources.values()])
    narrow = float(rates.max() / rates.min()) < 10  # within a decade: label the minor ticks too
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%g") if narrow else NullFormatter())
    axis.set_ylabel("learned learning rate η̃_k (log scale)")
    axis.legend(title="distilled for", fontsize=8)
    _title(figure, title or "Learned learning rate η̃_k of each inner step", note)
    return figure


def _cell_rows(axis, rows: Sequence[str], cells: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Horizontal markers mean ± std (bar) and every value (small dots) of each strategy of each
    row; rows top to bottom, strategies offset within a row."""
    for i, row in enumerate(rows):
        by_strategy = cells.get(row, {})
        for j, (strategy, values) in enumerate(by_strategy.items()):
            marker, color = STRATEGY_STYLE.get(strategy, ("o", f"C{4 + j}"))
            y = i + (j - (len(by_strategy) - 1) / 2) * 0.18
            values = np.asarray(values, dtype=float)
            axis.scatter(values, np.full(values.size, y), s=6, color=color, alpha=0.35, lw=0)
            axis.errorbar(values.mean(), y, xerr=values.std(), fmt=marker, color=color, ms=6, capsize=2)
    axis.set_yticks(range(len(rows)), rows)
    axis.set_ylim(len(rows) - 0.5, -0.5)
    axis.grid(axis="x", alpha=0.3)


def _reference(axis, values: Sequence[float]) -> None:
    """The full-data accuracy: a dashed line at its mean, shaded ± its std, where it lies within
    (or near) the distilled data's range; else an arrow at the panel's edge that gives its value,
    so that a far reference (0.999) does not squash the rest."""
    mean, std = float(np.mean(values)), float(np.std(values))
    low, high = axis.get_xlim()
    span = high - low
    if low - 0.25 * span <= mean <= high + 0.25 * span:
        axis.axvspan(mean - std, mean + std, color="k", alpha=0.08, lw=0)
        axis.axvline(mean, color="k", ls="--", lw=1)
        return
    right = mean > high
    axis.annotate(f"full data\n{mean:.3f} {'→' if right else '←'}", xy=(1.0 if right else 0.0, 0.02),
                  xycoords="axes fraction", ha="right" if right else "left", va="bottom", fontsize=8)


def _accuracy_legend(figure: Figure, strategies: Sequence[str], reference: bool) -> None:
    handles = [
        Line2D([], [], ls="", marker=STRATEGY_STYLE.get(s, ("o", "C4"))[0], color=STRATEGY_STYLE.get(s, ("o", "C4"))[1],
               label=STRATEGY_NOTES.get(s, s))
        for s in strategies
    ]
    if reference:
        handles.append(Line2D([], [], color="k", ls="--", lw=1, label="full data: mean (shaded: ± std; "
                              "an arrow when far off the panel's range)"))
    figure.legend(handles=handles, loc="lower center", ncols=2, fontsize=8,
                  title="marker: mean ± std over restarts × test models; dots: each test model", title_fontsize=8)


def plot_strategy_accuracies(
    accuracies: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    baseline: Mapping[str, Sequence[float]] | None = None,
    *,
    title: str = "Test accuracy of fresh models trained on distilled data",
    note: str = "",
) -> Figure:
    """One panel per test architecture; rows: the distilled sets; a marker per training
    strategy (mean ± std, every value as a dot); the full-data accuracy as a dashed line.

    Args:
      accuracies: row label (what the data was distilled for) → strategy → test arch → values.
      baseline: test arch → full-data accuracies (optional).
    """
    rows = list(accuracies)
    test_archs = list(next(iter(next(iter(accuracies.values())).values())))
    strategies = list(next(iter(accuracies.values())))
    legend_rows = -(-(len(strategies) + (baseline is not None)) // 2)
    bottom = 0.95 + 0.2 * legend_rows
    figure = _figure(3.4 * len(test_archs) + 1.8, 0.5 * len(rows) * max(1.0, len(strategies) / 3) + 1.2 + bottom,
                     note=note, left=1.6, bottom=bottom, wspace=0.08)
    axes = figure.subplots(1, len(test_archs), sharey=True, squeeze=False)[0]
    for axis, arch in zip(axes, test_archs):
        cells = {row: {s: accuracies[row][s][arch] for s in strategies} for row in rows}
        _cell_rows(axis, rows, cells)
        panel = f"tested on {arch}"
        if baseline is not None and arch in baseline:
            _reference(axis, baseline[arch])
            panel += f" (full data: {np.mean(baseline[arch]):.3f})"
        axis.set_title(panel, fontsize=10)
        axis.set_xlabel("test accuracy")
    _title(figure, title, note)
    _accuracy_legend(figure, strategies, baseline is not None)
    return figure


def plot_accuracies(
    groups: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    baseline: Mapping[str, Sequence[float]] | None = None,
    title: str = "Test accuracy of fresh models trained on the distilled data",
    note: str = "",
) -> Figure:
    """One panel per test architecture, one marker per strategy (mean ± std, dots: each value).

    Args:
      groups: test architecture → (strategy → accuracies), e.g. ``"2-layer"`` → {"s1": [...]}.
      baseline: test arch → full-data accuracies, drawn as a dashed line (optional).
    """
    by_row = {"distilled": {s: {arch: groups[arch][s] for arch in groups} for s in next(iter(groups.values()))}}
    return plot_strategy_accuracies(by_row, baseline, title=title, note=note)


def plot_sweeps(
    sweeps: Mapping[str, Mapping[str, Mapping[str, float | list[float]]]],
    *,
    fixed: Mapping[str, str] | None = None,
    note: str = "",
) -> Figure:
    """Test accuracy (mean, shaded: its 95% CI) against each swept hyper-parameter (paper Fig. 4).

    Args:
      sweeps: swept name → value → summary ({"mean", "ci95"}).
      fixed: swept name → what the sweep held fixed (panel title), e.g. "1 model, 1 step".
    """
    figure = _figure(3.8 * len(sweeps) + 0.9, 3.9, note=note, bottom=0.6)
    axes = figure.subplots(1, len(sweeps), squeeze=False, sharey=True)[0]
    for axis, (name, points) in zip(axes, sweeps.items()):
        values = [int(v) for v in points]
        means = [points[v]["mean"] for v in points]
        lows, highs = zip(*(points[v]["ci95"] for v in points))
        axis.fill_between(values, lows, highs, alpha=0.25, label="95% CI of the mean")
        axis.plot(values, means, marker="o", label="mean")
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(FixedLocator(values))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel(f"internal {name} (log scale)")
        axis.set_title(f"vs internal {name}" + (f" ({fixed[name]})" if fixed and name in fixed else ""), fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    _title(figure, "Test accuracy vs the distillation's hyper-parameters (paper Fig. 4)", note)
    return figure
