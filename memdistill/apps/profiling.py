"""Peak memory and time of one hypergradient versus the unroll length n, per method.

CPU: growth of the peak resident set size (``ru_maxrss``) over the process's peak after the
problem is built and one warm-up epoch has run, each point in a fresh process so no
measurement inherits another one's heap. CUDA: ``torch.cuda.max_memory_allocated`` growth.
Used by ``memdistill profile`` and ``bench/rss.py``.
"""
from __future__ import annotations

import csv
import io
import math
import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["mlp_problem", "measure", "measure_in_fresh_process", "profile", "available_memory",
           "write_csv", "plot_profile", "format_table"]

MiB = 2 ** 20
FIELDS = ["method", "n", "width", "depth", "momentum", "device", "peak_bytes", "seconds",
          "peak_stored_bytes", "forward_steps", "skipped"]


def mlp_problem(width: int = 10, depth: int = 3, steps: int = 40, epochs: int = 5, batch: int = 8,
                real: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> tuple:
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
    return tuple(t.to(device) for t in (model, x_syn, y_syn, lrs, x, y))


def _peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(method: str, n: int, width: int = 256, depth: int = 3, momentum: float = 0.9,
            snapshots: int | None = None, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """One hypergradient with n inner steps: s = gcd(n, 40) synthetic batches, n / s epochs."""
    from memdistill.engine.hypergradient import hypergradient

    torch.set_num_threads(threads)
    steps = math.gcd(n, 40)
    args = mlp_problem(width, depth, steps=steps, epochs=n // steps, device=device)
    # Warm-up with one epoch: allocator pools and autograd's workspaces are a fixed cost, not
    # what the method stores for n steps.
    hypergradient(*args[:3], args[3][:steps], *args[4:], momentum=momentum, method=method, snapshots=snapshots)
    before = _peak_memory(device)
    start = time.perf_counter()
    hg = hypergradient(*args, epochs=n // steps, momentum=momentum, method=method, snapshots=snapshots)
    seconds = time.perf_counter() - start
    return {"method": method, "n": n, "width": width, "depth": depth, "momentum": momentum, "device": device,
            "peak_bytes": _peak_memory(device) - before, "seconds": seconds,
            "peak_stored_bytes": hg.stats["peak_stored_bytes"], "forward_steps": hg.stats["forward_steps"],
            "skipped": ""}


def measure_in_fresh_process(method: str, n: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a newly spawned interpreter (its peak RSS starts clean)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, n), kwargs)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (the memory a new process can use)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("profile: /proc/meminfo has no MemAvailable line")


def profile(ns: Sequence[int], methods: Sequence[str], *, width: int = 256, depth: int = 3,
            momentum: float = 0.9, device: str = "cpu", budget: float = 0.6,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Measure every (method, n), smallest n first; skip a point whose memory, extrapolated
    linearly from the method's last measured point, exceeds ``budget`` of the available memory.

    Linear extrapolation is an upper bound for the sublinear methods and exact in the limit
    for autograd and replay. ``on_row`` sees each row as soon as it exists (progress).
    """
    rows = []
    for method in methods:
        last: dict[str, Any] | None = None
        for n in sorted(ns):
            limit = budget * (torch.cuda.mem_get_info()[0] if device.startswith("cuda") else available_memory())
            need = last["peak_bytes"] * n / last["n"] if last else 0.0
            if need > limit:
                row = {"method": method, "n": n, "width": width, "depth": depth, "momentum": momentum,
                       "device": device, "skipped": f"needs ~{need / 2**30:.1f} GiB (extrapolated from "
                       f"n={last['n']}), over {budget:.0%} of the {limit / budget / 2**30:.1f} GiB available"}
            elif device.startswith("cuda"):
                row = last = measure(method, n, width, depth, momentum, device=device)
            else:
                row = last = measure_in_fresh_process(method, n, width=width, depth=depth, momentum=momentum)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (columns FIELDS), written atomically."""
    from memdistill.atomic import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def plot_profile(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Log-log PNG: peak memory and seconds versus n, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from memdistill.apps.figures import save_png

    figure = Figure(figsize=(10, 4))
    memory, seconds = figure.subplots(1, 2)
    for method in dict.fromkeys(r["method"] for r in rows):
        done = [r for r in rows if r["method"] == method and not r["skipped"]]
        ns = [r["n"] for r in done]
        memory.plot(ns, [max(r["peak_bytes"], 1) / MiB for r in done], "o-", label=method)
        seconds.plot(ns, [r["seconds"] for r in done], "o-", label=method)
    for axis, label in [(memory, "peak memory growth (MiB)"), (seconds, "seconds per hypergradient")]:
        axis.set(xscale="log", yscale="log", xlabel="inner steps n", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"2-{'-'.join([str(rows[0]['width'])] * rows[0]['depth'])}-1 MLP, momentum {rows[0]['momentum']}")
    return save_png(figure, path)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; ratios against autograd at the same n where it was measured."""
    base = {r["n"]: r for r in rows if r["method"] == "autograd" and not r["skipped"]}
    lines = ["| method | n | peak memory (MiB) | vs autograd | stored (MiB) | seconds | time vs autograd |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"| {r['method']} | {r['n']} | skipped: {r['skipped']} | | | | |")
            continue
        b = base.get(r["n"])
        mem = f"{r['peak_bytes'] / b['peak_bytes']:.3f}" if b and b["peak_bytes"] else "–"
        tim = f"{r['seconds'] / b['seconds']:.2f}x" if b and b["seconds"] else "–"
        lines.append(f"| {r['method']} | {r['n']} | {r['peak_bytes'] / MiB:.1f} | {mem} | "
                     f"{r['peak_stored_bytes'] / MiB:.1f} | {r['seconds']:.2f} | {tim} |")
    return "\n".join(lines)
