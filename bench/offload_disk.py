"""offload="disk" on a long unroll: RSS growth and time against forward steps, in a fresh process.

    python bench/offload_disk.py                       # the issue's target: n = 10⁶, paper MLP 2-10-10-10-1
    python bench/offload_disk.py --n 100000 --compare  # smaller n, beside replay and √n checkpoint in memory
    python bench/offload_disk.py --n 1000000 --snapshots 64 --offload-dir /scratch

One hypergradient of the paper's 4-layer MLP (fused step, float64, momentum 0.9, one thread) on
moons-like random data, each configuration in its own process (peak RSS of a process is its
high-water mark, so runs must not share one). Target (issue 13): n = 10⁶ with offload="disk"
completes with RSS growth ≤ 100 MiB. Printed: peak RSS growth over the process after set-up,
stored bytes per level, forward steps (recomputation included), seconds, and µs per step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MiB = 2 ** 20


def rss_now() -> int:
    """Resident set size now, bytes (VmRSS)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def one(n: int, method: str, snapshots: int | None, offload: str | None, offload_dir: str | None) -> dict:
    """One hypergradient in this process: its measurements."""
    import torch

    import memdistill as md

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = md.mlp("4-layer")().double()
    s, b = 10, 8
    x_syn = torch.randn(s, b, 2, generator=g, dtype=torch.float64)
    y_syn = torch.randint(0, 2, (s, b), generator=g)
    x, y = torch.randn(256, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (256,), generator=g)
    lrs = torch.full((n,), 1e-3, dtype=torch.float64)
    md.hypergradient(model, x_syn, y_syn, lrs[:s], x, y, epochs=1, momentum=0.9, step="fused")  # warm up
    base = rss_now()
    start = time.perf_counter()
    hg = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=n // s, momentum=0.9, method=method,
                          snapshots=snapshots, step="fused", offload=offload, offload_dir=offload_dir)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st = hg.stats
    return {"n": n, "method": method, "offload": offload, "schedule": st["schedule"], "snapshots": st["snapshots"],
            "rss_growth": peak - base, "levels": st["levels"], "forward_steps": st["forward_steps"],
            "seconds": seconds, "step": st["step"], "loss": hg.loss.item()}


def run(n: int, method: str, snapshots: int | None, offload: str | None, offload_dir: str | None) -> dict:
    """:func:`one` in a fresh process."""
    args = json.dumps([n, method, snapshots, offload, offload_dir])
    out = subprocess.run([sys.executable, __file__, "--one", args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def line(r: dict) -> str:
    levels = ", ".join(f"{k} {v / MiB:.1f}" for k, v in r["levels"].items())
    return (f"{r['method']:>10} {str(r['offload']):>5} {r['schedule']:>10}({r['snapshots']}) n={r['n']:<8,} "
            f"RSS growth {r['rss_growth'] / MiB:7.1f} MiB  stored [{levels}] MiB  "
            f"{r['forward_steps']:>10,} forward steps  {r['seconds']:8.1f} s  "
            f"{1e6 * r['seconds'] / r['n']:6.1f} µs/step  [{r['step']}]  loss {r['loss']:.12g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10 ** 6, help="inner steps (a multiple of 10)")
    ap.add_argument("--snapshots", type=int, help="memory snapshots of the two-level schedule (default ⌊√n⌋)")
    ap.add_argument("--offload-dir", help="folder of the memory-mapped files (default: the temporary one)")
    ap.add_argument("--compare", action="store_true", help="also replay and √n checkpoint in memory (same loss)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*json.loads(a.one))))
        return
    rows = [run(a.n, "checkpoint", a.snapshots, "disk", a.offload_dir)]
    if a.compare:
        rows += [run(a.n, "checkpoint", None, None, None), run(a.n, "replay", None, None, None)]
    print("paper MLP 2-10-10-10-1 (fused step), float64, momentum 0.9, one thread, fresh process per row")
    for r in rows:
        print(line(r))
    r = rows[0]
    print(f"target: RSS growth {r['rss_growth'] / MiB:.1f} MiB <= 100 MiB: "
          f"{'met' if r['rss_growth'] <= 100 * MiB else 'NOT met'}")


if __name__ == "__main__":
    main()
