"""Peak RSS growth and time of one hypergradient per method, each in a fresh process.

    python bench/rss.py                       # n = 1024, 2-256-256-256-1 MLP, momentum 0.9
    python bench/rss.py --n 10000 --methods checkpoint,reversible
"""
from __future__ import annotations

import argparse

from memdistill.profiling import measure_in_fresh_process

MiB = 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="inner steps")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--methods", default="autograd,replay,checkpoint,reversible")
    a = ap.parse_args()
    n = a.n
    rows = [measure_in_fresh_process(m, n, width=a.width, depth=a.depth, momentum=a.momentum)
            for m in a.methods.split(",")]
    base = next((r for r in rows if r["method"] == "autograd"), rows[0])
    print(f"n = {n}, 2-{'-'.join([str(a.width)] * a.depth)}-1 MLP, momentum {a.momentum}, one thread")
    print("| method | peak RSS growth (MiB) | vs autograd | stored for reverse (MiB) | seconds | time vs autograd |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['rss_growth_bytes'] / MiB:.1f} | {r['rss_growth_bytes'] / base['rss_growth_bytes']:.3f} "
              f"| {r['peak_stored_bytes'] / MiB:.1f} | {r['seconds']:.2f} | {r['seconds'] / base['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
