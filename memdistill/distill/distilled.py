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
        steps = self.x.shape[0]
        if self.y.shape[:2] != self.x.shape[:2]:
            raise ValueError(
                f"DistilledData: y must start with x's [s, b] = {list(self.x.shape[:2])}, "
                f"got shape {list(self.y.shape)}"
            )
        if self.lrs.ndim != 1 or self.lrs.numel() % steps:
            raise ValueError(
                f"DistilledData: lrs must be 1-D with a multiple of s = {steps} values, "
                f"got shape {list(self.lrs.shape)}"
            )
        if not all(bool(torch.isfinite(t).all()) for t in (self.x, self.y.float(), self.lrs)):
            raise ValueError("DistilledData: x, y and lrs must be finite, got NaN or inf")

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
            was not written by :meth:`save`, comes from a newer format, or holds inconsistent
            tensors; the message names the file.
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
        if meta_json is None or set(tensors) != {"x", "y", "lrs"}:
            raise ValueError(f"DistilledData.load: {str(path)!r} was not written by DistilledData.save "
                             f"(tensors {sorted(tensors)}, memdistill metadata {'present' if meta_json else 'missing'})")
        try:
            meta = json.loads(meta_json)
            version = meta["format"]
            if version != FORMAT:
                raise ValueError(f"format {version!r}, this memdistill reads {FORMAT!r}")
            return cls(**tensors, config=meta["config"], seed=meta["seed"], history=meta["history"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"DistilledData.load: {str(path)!r} cannot be read: {error}") from None
