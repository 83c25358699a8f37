"""Peak RSS growth and time of one hypergradient per method, each in a fresh process.

    python bench/rss.py                       # n = 1024, 2-256-256-256-1 MLP, momentum 0.9
    python bench/rss.py --n 10000 --methods checkpoint,reversible

(`memdistill profile` sweeps several n and writes CSV and a plot.)
"""
from __future__ import annotations

import argparse

from memdistill.apps.profiling import format_table, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="inner steps")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--methods", default="autograd,replay,checkpoint,reversible")
    a = ap.parse_args()
    rows = profile([a.n], a.methods.split(","), width=a.width, depth=a.depth, momentum=a.momentum)
    print(f"2-{'-'.join([str(a.width)] * a.depth)}-1 MLP, momentum {a.momentum}, one thread, fresh process per row")
    print(format_table(rows))


if __name__ == "__main__":
    main()
