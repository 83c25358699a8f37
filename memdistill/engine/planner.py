"""Memory as a budget: what each method will store, predicted before it runs, and ``method="auto"``.

A sweep of n inner steps for B models of P parameters stores, for its reverse pass
(``stats["peak_stored_bytes"]``), with a state of S = B·P·itemsize bytes (twice that with
momentum: θ and v):

- ``replay``: n states (n·S); ``checkpoint``: the schedule's most-held states times S
  (√n segments, or ``snapshots`` for binomial); exact: the pool holds exactly that. With the
  generic step and no ``snapshots``, checkpoint records its segments (the ``taped`` schedule:
  segment starts stored, each segment replayed with its graphs and reversed in one backward
  pass), with G a step's graph (autograd's T(2) − T(1)) and segments of L ≈ √(n·S/G) steps
  (:func:`taped_segment`: the least (n/L)·S + L·G, exact as measured: ``stats["peak_stored_bytes"]``
  counts the graphs' saved tensors), when L ≥ 2, the peak is at most :data:`TAPED_MEMORY` times
  the plain schedule's and within ``memory``. Otherwise (the analytic steps, a short unroll, a
  graph of many states) the plain √n schedule.
- ``reversible``: the fixed-point bit stack, bounded by :func:`~memdistill.engine.fixedpoint.stack_bytes`
  and allocated up front (exact).
- ``autograd``: the tensors autograd saves, T(n) = T(1) + (n − 1)·(T(2) − T(1)), measured on the
  real shapes by unrolling 1 and 2 steps (the data are saved once, every further step alike).

``method="auto"`` takes the fastest that fits: autograd (only with the generic step: the analytic
fused and C++ steps replay faster than autograd unrolls, 0.50× at width 256), replay, taped
checkpointing (the generic step, where it records: as fast as replay for small models), binomial
checkpointing with the most snapshots that fit (least recomputation), then reversible (momentum
> 0; its trajectory is the fixed-point one, exact for it and ≤ 1e-9 from autograd in float64).
Reversible also wins over a binomial schedule that would recompute more than it costs,
``REVERSIBLE_STEP_COST`` · 2n forward steps. ``memory=None`` budgets half of the memory
available now (MemAvailable, or the free memory of the CUDA device). The budget bounds what is
stored for the reverse pass, not the model, the data or one step's workspace.

``offload`` (replay and checkpoint; :data:`OFFLOADS`) moves snapshots to a second storage level,
named in the schedule's actions (:mod:`memdistill.engine.schedules`):

- ``"cpu"``: the same schedule with every snapshot on level 1, host memory (pinned, copied on a
  side stream when the model is on a GPU). The budget bounds the host level, which holds all.
- ``"disk"``: :func:`~memdistill.engine.schedules.two_level` with c snapshots in memory (level 0)
  and the ⌈(n+1)/(c+1)⌉ segment starts in a memory-mapped file (level 1), ≈ 2n forward steps.
  c: ``snapshots`` for checkpoint (None: ⌊√n⌋), 0 for replay (every state on disk); "auto"
  replays in memory when every state fits the budget, else takes c = ⌊budget / S⌋. The budget
  bounds the memory level; the disk level is checked against the free space before any work.

``Plan.levels`` names the levels and their predicted peak bytes.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from memdistill.engine import schedules
from memdistill.engine.fixedpoint import stack_bytes

__all__ = ["Plan", "Sizes", "UNITS", "REVERSIBLE_STEP_COST", "TAPED_MEMORY", "taped_segment", "parse_memory",
           "format_bytes", "schedule_of", "predict", "choose", "default_budget", "OFFLOADS", "offload_plan"]

OFFLOADS = (None, "cpu", "disk")

UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40,
         "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(" + "|".join(UNITS) + r")?\s*")

REVERSIBLE_STEP_COST = 6
"""Forward steps of float SGD one reversible step (forward or back) costs: measured 1.66 s for
reversible against 0.52 s for √n checkpointing (≈ 2n forward steps each, n reverse steps at ≈ 3
forward steps) at n = 1,024 on the 2-256-256-256-1 MLP, one CPU thread."""


def parse_memory(memory: int | str | None, who: str = "hypergradient") -> int | None:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"64MB"``, ``"1.5 GiB"``.

    KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB powers of 1000; B or no unit: bytes.
    None stays None. Anything else, or less than one byte, is a ValueError naming ``memory``
    (after ``who: ``, the caller, when given).
    """
    if memory is None:
        return None
    value = None
    if isinstance(memory, int) and not isinstance(memory, bool):
        value = memory
    elif isinstance(memory, str) and (match := _MEMORY.fullmatch(memory)):
        value = int(float(match[1]) * UNITS[match[2] or "B"])
    if value is None or value < 1:
        raise ValueError(f"{who + ': ' if who else ''}memory must be a positive number of bytes or a string such as '512MiB', "
                         f"'2GiB' or '64MB' (KiB/MiB/GiB/TiB: powers of 1024, KB/MB/GB/TB: powers of 1000), "
                         f"got {memory!r}")
    return value


def format_bytes(n: int) -> str:
    """``67108864`` -> ``'64.0 MiB (67,108,864 bytes)'``."""
    return f"{n / 2 ** 20:,.1f} MiB ({n:,} bytes)"


@dataclass(frozen=True)
class Sizes:
    """What the predictions need: n steps, B rows of P parameters of ``itemsize`` bytes, γ."""
    n: int
    rows: int
    params: int
    itemsize: int
    momentum: float

    @property
    def state_bytes(self) -> int:
        """S: bytes of one stored state (θ, and v with momentum)."""
        return self.rows * self.params * self.itemsize * (2 if self.momentum else 1)


@dataclass(frozen=True)
class Plan:
    """What a sweep will do, decided before it runs (see :func:`memdistill.plan`).

    Attributes:
      method: "autograd" | "replay" | "checkpoint" | "reversible".
      snapshots: the binomial schedule's stored states (checkpoint), else None.
      schedule: "autograd" | "store-all" | "periodic" | "taped" | "binomial" | "reversible" | "two-level".
      predicted_peak_bytes: what the method will store for the reverse pass (the run's
        ``stats["peak_stored_bytes"]``; equal to it but for autograd, where it is measured).
      forward_steps: inner steps computed outside reverse steps, recomputation included.
      steps: n.
      memory: the budget in bytes it was checked against (None: not checked).
      why: one sentence on the choice.
      offload: None, "cpu" or "disk": where the second storage level is (None: no second level).
      levels: ((level name, predicted peak bytes), ...) per storage level: ("memory",) alone,
        ("device", "host") for "cpu", ("memory", "disk") for "disk". predicted_peak_bytes is the
        memory one's (the host's for "cpu").
      segment: the taped schedule's segment length (steps recorded and reversed together), else None.
    """
    method: str
    snapshots: int | None
    schedule: str
    predicted_peak_bytes: int
    forward_steps: int
    steps: int
    memory: int | None
    why: str
    offload: str | None = None
    levels: tuple[tuple[str, int], ...] = ()
    segment: int | None = None


def schedule_of(method: str, n: int, snapshots: int | None, offload: str | None = None,
                segment: int | None = None) -> tuple[str, schedules.Lazy]:
    """(schedule name, actions) of a stored-state method: replay, checkpoint or reversible;
    ``offload`` "cpu": the same on level 1, "disk": two-level with ``snapshots`` (None: ⌊√n⌋;
    replay: 0) in memory; ``segment``: checkpoint's taped schedule (see the module docstring)."""
    if segment is not None:
        return "taped", schedules.lazy("taped", n, segment)
    if offload == "disk":
        memory_slots = 0 if method == "replay" else snapshots if snapshots is not None else math.isqrt(n)
        return "two-level", schedules.two_level(n, memory_slots)
    name = {"replay": "store-all", "reversible": "reversible"}.get(method, "periodic" if snapshots is None else "binomial")
    return name, schedules.lazy(name, n, snapshots, level=1 if offload == "cpu" else 0)


TAPED_MEMORY = 3
"""Checkpoint records its segments when that stores at most this many times what the plain √n
schedule stores: a step's graph of up to ≈ 9 states (MLPs, LeNet: ≈ 4), where autograd's
per-call overhead makes recording pay; a wide ConvNet's graph (≈ 25 states) keeps the plain one."""


def taped_segment(sizes: Sizes, graph: int) -> int:
    """The segment L of the taped schedule that stores the least, ⌊(n−1)/L⌋ starts of S bytes and
    L steps' graphs of G bytes (the longest on a tie: fewer backward passes), near √(n·S/G)."""
    n, size = sizes.n, sizes.state_bytes
    near = math.isqrt(n * size // max(graph, 1))
    return min(range(1, min(n, 2 * near + 2) + 1), key=lambda L: ((n - 1) // L * size + L * graph, -L))


def predict(method: str, sizes: Sizes, snapshots: int | None, autograd_bytes: Callable[[int], int],
            memory: int | None = None, why: str = "", offload: str | None = None,
            graph_bytes: Callable[[], int] | None = None) -> Plan:
    """The :class:`Plan` of one given method (``autograd_bytes(n)``: autograd's measured T(n)),
    its snapshots offloaded by :func:`offload_plan`. ``graph_bytes()``: G, one recorded step's
    graph, for a step that can record (None: it cannot; checkpoint is then never taped)."""
    n = sizes.n
    if method == "checkpoint" and snapshots is None and offload is None and graph_bytes is not None:
        graph = graph_bytes()
        segment = taped_segment(sizes, graph)
        stats = schedules.counts(schedules.lazy("taped", n, segment), n)
        peak = stats.max_stored * sizes.state_bytes + stats.max_taped * graph
        plain = schedules.counts(schedules.lazy("periodic", n), n).max_stored * sizes.state_bytes
        if segment >= 2 and peak <= TAPED_MEMORY * plain and (memory is None or peak <= memory):
            return Plan(method, None, "taped", peak, stats.forward_steps, n, memory, why, None,
                        (("memory", peak),), segment)
    if offload == "disk" and method in ("replay", "checkpoint"):  # counted without the schedule
        return offload_plan(Plan(method, snapshots, "", 0, 0, n, memory, why), sizes, offload)
    if method == "autograd":
        return Plan("autograd", None, "autograd", autograd_bytes(n), n, n, memory, why)
    if method == "reversible":
        peak = stack_bytes(n, sizes.rows * sizes.params, sizes.momentum)
        return Plan("reversible", None, "reversible", peak, 2 * n, n, memory, why)
    name, actions = schedule_of(method, n, snapshots)
    stats = schedules.counts(actions, n)
    peak = stats.max_stored * sizes.state_bytes
    return offload_plan(Plan(method, snapshots if name == "binomial" else None, name,
                             peak, stats.forward_steps, n, memory, why, None, (("memory", peak),)), sizes, offload)


def offload_plan(plan: Plan, sizes: Sizes, offload: str | None) -> Plan:
    """``plan`` (replay or checkpoint) with its snapshots offloaded; autograd and reversible plans
    and ``offload=None`` come back as they are, with their one level."""
    if offload is None or plan.method not in ("replay", "checkpoint"):
        return plan
    n, size = sizes.n, sizes.state_bytes
    if offload == "cpu":
        return replace(plan, offload="cpu", levels=(("device", 0), ("host", plan.predicted_peak_bytes)))
    slots = 0 if plan.method == "replay" else plan.snapshots if plan.snapshots is not None else math.isqrt(n)
    in_memory, on_disk = schedules.two_level_slots(n, slots)
    return replace(plan, snapshots=None if plan.method == "replay" else slots, schedule="two-level",
                   predicted_peak_bytes=in_memory * size, forward_steps=schedules.two_level_cost(n, slots),
                   offload="disk", levels=(("memory", in_memory * size), ("disk", on_disk * size)))


def _fits(plan: Plan, memory: int) -> bool:
    return plan.predicted_peak_bytes <= memory


def _snapshots(count: int) -> str:
    return f"{count:,} snapshot fits" if count == 1 else f"{count:,} snapshots fit"


def choose(sizes: Sizes, memory: int, autograd_bytes: Callable[[int], int] | None,
           offload: str | None = None, graph_bytes: Callable[[], int] | None = None) -> Plan:
    """``method="auto"``: the fastest plan whose predicted peak is at most ``memory`` bytes.

    ``autograd_bytes`` None: autograd is no candidate (the step is analytic). ``graph_bytes``
    (a step that records, :func:`predict`): checkpoint's taped schedule is the next candidate
    after replay (as fast as replay on small models, and faster than binomial checkpointing in
    the same memory, which recomputes its segments and each reverse step's gradient). ValueError, naming
    the smallest budget that would do, when nothing fits. ``offload`` "cpu": no autograd (its
    graphs stay on the device), the choice's snapshots on the host; "disk": replay in memory if
    every state fits, else two-level checkpointing with as many memory snapshots as fit (never
    an error: the rest goes to disk).
    """
    budget = format_bytes(memory)
    if offload == "cpu":
        return offload_plan(choose(sizes, memory, None), sizes, "cpu")
    if offload == "disk":
        if sizes.n * sizes.state_bytes <= memory:
            return predict("replay", sizes, None, lambda n: 0, memory, f"every state fits in {budget}")
        slots = memory // sizes.state_bytes
        if not slots:
            return predict("replay", sizes, None, lambda n: 0, memory, f"no state fits in {budget}: all on disk", "disk")
        return predict("checkpoint", sizes, slots, lambda n: 0, memory,
                       f"{_snapshots(slots)} in {budget}; segment starts go to disk", "disk")
    if autograd_bytes is not None:
        plan = predict("autograd", sizes, None, autograd_bytes, memory, f"autograd's graphs fit in {budget}")
        if _fits(plan, memory):
            return plan
    plan = predict("replay", sizes, None, autograd_bytes or (lambda n: 0), memory,
                   f"every state fits in {budget}")
    if _fits(plan, memory):
        return plan
    if graph_bytes is not None:
        plan = predict("checkpoint", sizes, None, lambda n: 0, memory, "", None, graph_bytes)
        if plan.schedule == "taped":   # predict keeps it within memory
            return replace(plan, why=f"the segment starts and one recorded segment ({plan.segment} steps' graphs) "
                                     f"fit in {budget} (not all {sizes.n} states)")
    reversible = (predict("reversible", sizes, None, lambda n: 0, memory,
                          f"the fixed-point bit stack fits in {budget}") if sizes.momentum else None)
    slots = min(memory // sizes.state_bytes, sizes.n)
    if slots >= 1:
        plan = predict("checkpoint", sizes, slots, lambda n: 0, memory,
                       f"{_snapshots(slots)} in {budget} (not all {sizes.n} states)")
        cheap = plan.forward_steps <= REVERSIBLE_STEP_COST * 2 * sizes.n
        if cheap or reversible is None or not _fits(reversible, memory):
            return plan
        return replace(reversible, why=f"{reversible.why}; binomial checkpointing with {slots} snapshots "
                       f"would recompute {plan.forward_steps:,} steps")
    if reversible is not None and _fits(reversible, memory):
        return reversible
    least = min([sizes.state_bytes] + ([reversible.predicted_peak_bytes] if reversible else []))
    raise ValueError(f"hypergradient: memory={budget} is too small for n={sizes.n}: the smallest plan needs "
                     f"{format_bytes(least)} ({'one checkpoint snapshot' if least == sizes.state_bytes else 'reversible'}"
                     f"{'' if sizes.momentum else '; with momentum > 0 reversible may need less'}); "
                     f"pass memory >= {least}")


def default_budget(device: torch.device) -> int:
    """Half of the memory available now: free CUDA memory, else MemAvailable (or free pages)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
