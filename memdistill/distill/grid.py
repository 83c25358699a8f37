"""A picture of distilled images: one row per inner step, one column per synthetic object.

Row i shows x̃[i] (the batch of steps i, i + s, i + 2s, …), its objects ordered by class with
the class name above the top row, and the learned rates of those steps beside it
(``η = η_i, η_{i+s}, …``). Images are un-normalised with the data set's per-channel mean and
std, then shown on one common scale (the 1st to 99th percentile of the whole grid), so that
brightness compares across cells. matplotlib's object API; written atomically as PNG.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memdistill.atomic import write_bytes_atomic

__all__ = ["display_images", "grid_png", "save_grid_png"]


def display_images(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """x [..., C, H, W] standardised → float [..., H, W, C] in [0, 1]: x·std + mean per channel,
    then scaled by the 1st and 99th percentile of all values and clipped."""
    values = x.detach().to(torch.float64).cpu().numpy()
    channels = values.shape[-3]
    scale = np.ones(channels) if std is None else np.asarray(std, dtype=np.float64)
    shift = np.zeros(channels) if mean is None else np.asarray(mean, dtype=np.float64)
    if scale.shape != (channels,) and scale.size != 1:
        raise ValueError(f"save_grid: std must hold one value per channel ({channels}), got {scale.size}")
    values = values * scale.reshape(-1, 1, 1) + shift.reshape(-1, 1, 1)
    low, high = np.percentile(values, [1, 99])
    values = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    return np.moveaxis(values, -3, -1)


def grid_png(
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> bytes:
    """PNG bytes of the grid of x [s, b, C, H, W] with labels y [s, b] (or soft labels
    [s, b, C]: their argmax) and rates lrs [s·e]."""
    from matplotlib.figure import Figure  # imported here: only pictures need it

    if x.ndim != 5:
        raise ValueError(f"save_grid: x must be images [s, b, C, H, W], got shape {list(x.shape)}")
    steps, objects = x.shape[:2]
    ids = (y.argmax(-1) if y.ndim == 3 else y).long().cpu()
    images = display_images(x, mean, std)
    rates = lrs.detach().cpu().reshape(-1, steps)  # [e, s]
    cell = 1.1 if x.shape[-1] <= 16 else 1.3
    figure = Figure(figsize=(1.6 + cell * objects, 0.6 + cell * steps), layout="constrained")
    axes = figure.subplots(steps, objects, squeeze=False)
    for i in range(steps):
        order = torch.argsort(ids[i], stable=True)
        for j in range(objects):
            axis, k = axes[i, j], int(order[j])
            image = images[i, k]
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                label = int(ids[i, k])
                axis.set_title(class_names[label] if class_names else str(label), fontsize=9)
        eta = ", ".join(f"{float(r):.3g}" for r in rates[:, i])
        axes[i, 0].set_ylabel(f"step {i}\nη = {eta}", rotation=0, ha="right", va="center", fontsize=8)
    epochs = rates.shape[0]
    figure.suptitle(f"distilled images: {steps} steps × {objects} images, {epochs} epoch{'s' * (epochs != 1)}",
                    fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def save_grid_png(path: str | Path, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, **style) -> Path:
    """Write :func:`grid_png` to ``path`` atomically."""
    return write_bytes_atomic(path, grid_png(x, y, lrs, **style))
