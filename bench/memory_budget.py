"""Memory as a budget: what a run takes (peak RSS growth) against what it planned and accounted.

    python bench/memory_budget.py                      # pool targets at n = 128 and 1024, every method
    python bench/memory_budget.py --n 1024 --methods replay,checkpoint
    python bench/memory_budget.py --auto 64MiB --n 20000   # method="auto" under a budget (momentum 0.9)

Each point is one hypergradient of the 2-256-256-256-1 MLP (momentum 0.9, one thread) in a fresh
process (:func:`memdistill.apps.profiling.profile`). Targets of the snapshot pool: RSS growth ≤
1.3 × the accounted stored bytes + 20 MiB, and checkpoint's growth from the smallest to the
largest n ≤ 3.5× (from 128 to 1,024: √8 ≈ 2.8 is the promise). With ``--auto`` the run must stay
within its budget: measured stored bytes ≤ the budget.
"""
from __future__ import annotations

import argparse

from memdistill.apps.profiling import RESOLUTION, MiB, make_problem, profile
from memdistill.engine.planner import parse_memory


def check(rows: list[dict]) -> list[str]:
    """One line per measured row: growth, accounted, predicted and whether the pool target holds."""
    lines = []
    for r in rows:
        limit = 1.3 * r["peak_stored_bytes"] + 20 * MiB
        growth = f"{r['peak_bytes'] / MiB:8.1f}" if r["peak_bytes"] >= RESOLUTION else "   < 1.0"
        lines.append(f"{r['method']:>10} {r['plan']:>26} n={r['n']:<7} RSS growth {growth} MiB  "
                     f"accounted {r['peak_stored_bytes'] / MiB:8.1f}  predicted {r['predicted_peak_bytes'] / MiB:8.1f}  "
                     f"limit {limit / MiB:8.1f}  {'ok' if r['peak_bytes'] <= limit else 'OVER'}  {r['seconds']:.1f} s  "
                     f"{r['forward_steps']:,} forward steps")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="128,1024", help="inner steps, comma-separated")
    ap.add_argument("--methods", default="autograd,replay,checkpoint,reversible")
    ap.add_argument("--auto", help="a memory budget: measure method='auto' under it instead")
    a = ap.parse_args()
    ns = [int(v) for v in a.n.split(",")]
    memory = parse_memory(a.auto, "--auto")
    rows = profile(ns, ["auto"] if memory else a.methods.split(","), momentum=0.9, problem=make_problem(),
                   memory=memory, budget=0.5)
    print("2-256-256-256-1 MLP, momentum 0.9, one thread, fresh process per row"
          + (f", memory={a.auto}" if memory else ""))
    print("\n".join(check([r for r in rows if not r["skipped"]])))
    for r in rows:
        if r["skipped"]:
            print(f"{r['method']} n={r['n']}: skipped, {r['skipped']}")
    checkpoint = sorted((r["n"], r["peak_bytes"]) for r in rows if r["method"] == "checkpoint" and not r["skipped"])
    if len(checkpoint) > 1 and checkpoint[0][1] > 0:
        print(f"checkpoint RSS growth n={checkpoint[0][0]} -> {checkpoint[-1][0]}: "
              f"{checkpoint[-1][1] / checkpoint[0][1]:.2f}x (target <= 3.5x)")
    if memory:
        over = [r for r in rows if not r["skipped"] and r["peak_stored_bytes"] > memory]
        print(f"within memory={a.auto}: {'no: ' + str([r['n'] for r in over]) if over else 'yes'}")


if __name__ == "__main__":
    main()
