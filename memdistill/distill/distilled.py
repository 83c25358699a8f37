"""DistilledData: a distilled data set, its learned learning rates and how it was made.

On disk it is one safetensors file: the tensors ``x``, ``y``, ``lrs`` and, in the header's
metadata under the key ``"memdistill"``, a JSON object with the config, the seed and the
outer-loss history. Files are written atomically; a load returns the same bits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from memdistill.atomic import write_bytes_atomic

FORMAT = "memdistill.DistilledData/1"


@dataclass
class DistilledData:
    """The output of :meth:`memdistill.Distiller.fit`.

    Attributes:
      x: synthetic objects [s, b, *in_shape]; step k of an epoch uses ``x[k % s]``.
      y: labels [s, b]: int64 class ids, or float soft labels ([s, b] targets in (0, 1) for one
        logit, [s, b, C] class probabilities for C outputs).
      lrs: learned learning rates [s · epochs], all positive.
      config: how the data was made (steps, epochs, momentum, architectures, …; JSON values).
      seed: the Distiller's seed.
      history: outer loss of every outer step.
    """

    x: torch.Tensor
    y: torch.Tensor
    lrs: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("x", "y", "lrs"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"DistilledData: {name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.x.ndim < 3 or not self.x.is_floating_point():
            raise ValueError(f"DistilledData: x must be a floating tensor [s, b, *in_shape], "
                             f"got {self.x.dtype} of shape {list(self.x.shape)}")
        if self.y.shape[:2] != self.x.shape[:2] or self.y.ndim > 3:
            raise ValueError(
                f"DistilledData: y must start with x's [s, b] = {list(self.x.shape[:2])}, "
                f"got shape {list(self.y.shape)}"
            )
        if not (self.y.is_floating_point() or (self.y.dtype == torch.int64 and self.y.ndim == 2)):
            raise ValueError(f"DistilledData: y must be int64 class ids [s, b] or floating soft labels, "
                             f"got {self.y.dtype} of shape {list(self.y.shape)}")
        if self.lrs.ndim != 1 or self.lrs.numel() % self.steps or not self.lrs.is_floating_point():
            raise ValueError(
                f"DistilledData: lrs must be a 1-D floating tensor with a multiple of s = {self.steps} values, "
                f"got {self.lrs.dtype} of shape {list(self.lrs.shape)}"
            )
        if not all(bool(torch.isfinite(t).all()) for t in (self.x, self.y.float(), self.lrs)):
            raise ValueError("DistilledData: x, y and lrs must be finite, got NaN or inf")

    def __repr__(self) -> str:
        """One line: shapes, dtypes, steps × epochs, momentum, architectures, seed, outer steps."""
        archs = self.config.get("archs")
        label = "soft" if self.y.is_floating_point() else "class-id"
        return (f"DistilledData(x={list(self.x.shape)} {str(self.x.dtype).removeprefix('torch.')}, "
                f"y={list(self.y.shape)} {label}, lrs={self.lrs.numel()} (s={self.steps} × e={self.epochs}), "
                f"momentum={self.momentum:g}, archs={archs!r}, seed={self.seed}, outer_steps={len(self.history)})")

    @property
    def steps(self) -> int:
        """s, the synthetic batches of one epoch."""
        return int(self.x.shape[0])

    @property
    def epochs(self) -> int:
        """e, the epochs the learned schedule covers (``lrs`` has s · e values)."""
        return self.lrs.numel() // self.steps

    @property
    def momentum(self) -> float:
        """γ of the inner SGD the data was distilled with (0 if not recorded)."""
        return float(self.config.get("momentum", 0.0))

    def save_grid(
        self,
        path: str | Path,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Path:
        """Write a PNG grid of the distilled images (rows = inner steps, columns = objects by
        class, the learned rates beside each row; see :mod:`memdistill.distill.grid`).

        ``mean``, ``std`` (per channel) un-normalise the images and ``class_names`` label the
        columns; each defaults to the entry of :attr:`config` of that name, which ``memdistill
        distill`` records from the data set.
        """
        from memdistill.distill.grid import save_grid_png

        return save_grid_png(
            path, self.x, self.y, self.lrs,
            mean=self.config.get("mean") if mean is None else mean,
            std=self.config.get("std") if std is None else std,
            class_names=self.config.get("class_names") if class_names is None else class_names,
        )

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensors + JSON metadata) atomically; return its path."""
        meta = {"format": FORMAT, "config": self.config, "seed": self.seed, "history": self.history}
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in ("x", "y", "lrs")}
        blob = safetensors.torch.save(tensors, metadata={"memdistill": json.dumps(meta, allow_nan=False)})
        return write_bytes_atomic(path, blob)

    @classmethod
    def load(cls, path: str | Path) -> DistilledData:
        """Read a file written by :meth:`save` (same bits as saved).

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: the file is not a safetensors file (truncated, corrupt, something else),
            was not written by :meth:`save` (missing or extra tensors, no memdistill metadata),
            comes from a newer format, or holds tensors of the wrong shapes or dtypes or
            metadata of the wrong types; the message names the file and what was expected.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DistilledData.load: no file at {str(path)!r}")
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                meta_json = (handle.metadata() or {}).get("memdistill")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as error:  # the reader's own errors: truncated, bad header, not safetensors
            raise ValueError(f"DistilledData.load: {str(path)!r} is not a readable safetensors file "
                             f"({type(error).__name__}: {error})") from None
        try:
            return cls(**_checked_tensors(tensors, meta_json), **_checked_meta(meta_json))
        except (ValueError, TypeError) as error:
            raise ValueError(f"DistilledData.load: {str(path)!r} cannot be read: {error}") from None


def _checked_tensors(tensors: dict[str, torch.Tensor], meta_json: str | None) -> dict[str, torch.Tensor]:
    """{x, y, lrs} of a file; ValueError naming the tensors missing or unexpected."""
    missing, extra = sorted({"x", "y", "lrs"} - set(tensors)), sorted(set(tensors) - {"x", "y", "lrs"})
    if meta_json is None or missing or extra:
        raise ValueError(f"it was not written by DistilledData.save: expected the tensors ['lrs', 'x', 'y'] "
                         f"and memdistill metadata, got tensors {sorted(tensors)} (missing {missing}, "
                         f"unexpected {extra}), metadata {'present' if meta_json is not None else 'missing'}")
    return tensors


def _checked_meta(meta_json: str) -> dict[str, Any]:
    """config, seed and history of the JSON metadata; ValueError for a newer format or wrong types."""
    try:
        meta = json.loads(meta_json)
    except ValueError as error:
        raise ValueError(f"its memdistill metadata is not JSON ({error})") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise ValueError(f"its memdistill metadata must be a JSON object with a 'format', got {meta_json[:80]!r}")
    version = meta["format"]
    if version != FORMAT:
        prefix, _, number = str(version).partition("/")
        newer = prefix == FORMAT.split("/")[0] and number.isdigit() and int(number) > int(FORMAT.split("/")[1])
        raise ValueError(f"format {version!r}, this memdistill reads {FORMAT!r}"
                         + ("; it comes from a newer memdistill: upgrade to read it" if newer else ""))
    expected = {"config": dict, "seed": int, "history": list}
    for key, kind in expected.items():
        if key not in meta:
            raise ValueError(f"its memdistill metadata lacks the key {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"metadata {key!r} must be a JSON {kind.__name__}, got {type(meta[key]).__name__}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta["history"]):
        raise ValueError("metadata 'history' must be a list of numbers (the outer losses)")
    return {key: meta[key] for key in expected}
