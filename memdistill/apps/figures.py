"""PNG figures of a reproduction (matplotlib's object API: no pyplot, no global state).

Every ``plot_*`` function returns a ``matplotlib.figure.Figure``; :func:`save_png` writes it
atomically. The 2-D plots (data, decision boundaries, synthetic objects) need 2 features.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from memdistill.atomic import write_bytes_atomic
from memdistill.data import Dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.evaluation import predict

CMAP = "coolwarm"


def save_png(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` to PNG bytes and write them atomically to ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def _bounds(dataset: Dataset, margin: float = 0.5) -> tuple[float, float, float, float]:
    points = torch.cat([dataset.x_train, dataset.x_test])
    low, high = points.min(0).values - margin, points.max(0).values + margin
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def _scatter_classes(axis, x: torch.Tensor, y: torch.Tensor, classes: int, **style) -> None:
    axis.scatter(x[:, 0], x[:, 1], c=y, cmap=CMAP, vmin=0, vmax=max(classes - 1, 1), **style)


def plot_dataset(dataset: Dataset) -> Figure:
    """The train (dots) and test (crosses) points, coloured by class."""
    figure = Figure(figsize=(5, 4))
    axis = figure.subplots()
    _scatter_classes(axis, dataset.x_train, dataset.y_train, dataset.classes, s=8, label="train")
    _scatter_classes(axis, dataset.x_test, dataset.y_test, dataset.classes, s=14, marker="x", label="test")
    axis.set_title(f"{dataset.name}: {len(dataset.x_train)} train, {len(dataset.x_test)} test (standardised)")
    axis.legend(loc="best")
    return figure


def plot_boundaries(dataset: Dataset, rows: Mapping[str, Sequence[tuple[str, nn.Module, float]]]) -> Figure:
    """Decision regions of models over the test points.

    Args:
      rows: row title → list of (architecture, model, test accuracy), one panel each.
    """
    columns = max(len(panels) for panels in rows.values())
    figure = Figure(figsize=(3.6 * columns, 3.2 * len(rows)))
    axes = np.atleast_2d(figure.subplots(len(rows), columns, squeeze=False))
    x0, x1, y0, y1 = _bounds(dataset)
    grid_x, grid_y = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    grid = torch.tensor(np.stack([grid_x.ravel(), grid_y.ravel()], 1), dtype=torch.float32)
    for row, (title, panels) in enumerate(rows.items()):
        for column, (arch, model, acc) in enumerate(panels):
            axis = axes[row, column]
            regions = predict(model, grid).reshape(grid_x.shape).numpy()
            axis.contourf(
                grid_x, grid_y, regions, levels=np.arange(dataset.classes + 1) - 0.5, cmap=CMAP, alpha=0.3
            )
            _scatter_classes(axis, dataset.x_test, dataset.y_test, dataset.classes, s=5)
            axis.set_title(f"{title}: {arch} (acc {acc:.3f})", fontsize=9)
    return figure


def synthetic_steps(steps: int, shown: int = 4) -> list[int]:
    """1-based steps to show: evenly spaced from 1 to s (1, 14, 27, 40 for s = 40)."""
    return sorted({int(round(v)) for v in np.linspace(1, steps, min(shown, steps))})


def plot_synthetic(dataset: Dataset, sources: Mapping[str, DistilledData]) -> Figure:
    """Synthetic objects of steps 1, 14, 27, 40 (or evenly spaced) of each distilled set."""
    steps = synthetic_steps(next(iter(sources.values())).steps)
    figure = Figure(figsize=(3.2 * len(steps), 3 * len(sources)))
    axes = np.atleast_2d(figure.subplots(len(sources), len(steps), squeeze=False))
    x0, x1, y0, y1 = _bounds(dataset)
    for row, (name, data) in enumerate(sources.items()):
        labels = (
            data.y
            if not data.y.is_floating_point()
            else (data.y.argmax(-1) if data.y.ndim == 3 else data.y > 0.5)
        )
        for column, step in enumerate(steps):
            axis = axes[row, column]
            axis.scatter(dataset.x_train[:, 0], dataset.x_train[:, 1], c="lightgrey", s=3)
            _scatter_classes(
                axis, data.x[step - 1], labels[step - 1].long(), dataset.classes, s=40, edgecolors="k"
            )
            axis.set_xlim(min(x0, float(data.x[..., 0].min())), max(x1, float(data.x[..., 0].max())))
            axis.set_ylim(min(y0, float(data.x[..., 1].min())), max(y1, float(data.x[..., 1].max())))
            axis.set_title(f"{name}: step {step}", fontsize=9)
    return figure


def plot_lrs(sources: Mapping[str, DistilledData]) -> Figure:
    """Learned learning rate η̃_k of every inner step k, one line per distilled set."""
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for name, data in sources.items():
        axis.plot(np.arange(1, data.lrs.numel() + 1), data.lrs.double().numpy(), label=name)
        for epoch in range(1, data.epochs):
            axis.axvline(epoch * data.steps + 0.5, color="lightgrey", lw=0.5)
    axis.set_xlabel("inner step k")
    axis.set_yscale("log")
    axis.set_ylabel("learned learning rate (log scale)")
    axis.legend()
    return figure


def plot_accuracies(groups: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Box plots of test accuracies: one panel per test architecture.

    Args:
      groups: test architecture → (label → accuracies), e.g. ``"2-layer/s1"`` → [...].
    """
    figure = Figure(figsize=(max(6, 0.45 * max(len(g) for g in groups.values()) * len(groups)), 4.5))
    axes = np.atleast_1d(figure.subplots(1, len(groups), sharey=True, squeeze=False)[0])
    for axis, (test_arch, boxes) in zip(axes, groups.items()):
        axis.boxplot(list(boxes.values()))
        axis.set_xticks(np.arange(1, len(boxes) + 1), list(boxes), rotation=90, fontsize=7)
        axis.set_title(f"tested on {test_arch}")
    axes[0].set_ylabel("test accuracy")
    return figure


def plot_sweeps(sweeps: Mapping[str, Mapping[str, Mapping[str, float | list[float]]]]) -> Figure:
    """Test accuracy (mean with its 95% CI) against each swept hyper-parameter (paper Fig. 4)."""
    figure = Figure(figsize=(4.2 * len(sweeps), 3.6))
    axes = np.atleast_1d(figure.subplots(1, len(sweeps), squeeze=False)[0])
    for axis, (name, points) in zip(axes, sweeps.items()):
        values = [int(v) for v in points]
        means = [points[v]["mean"] for v in points]
        lows, highs = zip(*(points[v]["ci95"] for v in points))
        axis.plot(values, means, marker="o")
        axis.fill_between(values, lows, highs, alpha=0.25)
        axis.set_xscale("log")
        axis.set_xlabel(f"internal {name}")
    axes[0].set_ylabel("test accuracy")
    return figure
