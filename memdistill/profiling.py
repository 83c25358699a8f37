"""Peak memory and time of one hypergradient, each measurement in a fresh process.

CPU: growth of the peak resident set size (``ru_maxrss``) over the process's peak after the
problem is built and one warm-up epoch has run, so a measurement never inherits another one's heap. Used by
``bench/rss.py``.
"""
from __future__ import annotations

import math
import multiprocessing
import resource
import time
from typing import Any

import torch
from torch import nn

__all__ = ["mlp_problem", "measure", "measure_in_fresh_process"]


def mlp_problem(width: int = 10, depth: int = 3, steps: int = 40, epochs: int = 5, batch: int = 8,
                real: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple:
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
    return model, x_syn, y_syn, lrs, x, y


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(method: str, n: int, width: int = 256, depth: int = 3, momentum: float = 0.9,
            snapshots: int | None = None, threads: int = 1) -> dict[str, Any]:
    """One hypergradient with n inner steps: s = gcd(n, 40) synthetic batches, n / s epochs."""
    from memdistill.hypergradient import hypergradient

    torch.set_num_threads(threads)
    steps = math.gcd(n, 40)
    args = mlp_problem(width, depth, steps=steps, epochs=n // steps)
    # Warm-up with one epoch: allocator pools and autograd's workspaces are a fixed cost, not
    # what the method stores for n steps.
    hypergradient(*args[:3], args[3][:steps], *args[4:], momentum=momentum, method=method, snapshots=snapshots)
    before = _peak_rss()
    start = time.perf_counter()
    hg = hypergradient(*args, epochs=n // steps, momentum=momentum, method=method, snapshots=snapshots)
    seconds = time.perf_counter() - start
    return {"method": method, "n": n, "width": width, "depth": depth, "momentum": momentum,
            "rss_growth_bytes": _peak_rss() - before, "seconds": seconds,
            "peak_stored_bytes": hg.stats["peak_stored_bytes"], "forward_steps": hg.stats["forward_steps"]}


def measure_in_fresh_process(method: str, n: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a newly spawned interpreter (its peak RSS starts clean)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, n), kwargs)
