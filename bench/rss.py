"""Peak RSS growth and time of one hypergradient per method, each in a fresh process.

    python bench/rss.py                       # n = 1024, 2-256-256-256-1 MLP, momentum 0.9
    python bench/rss.py --n 10000 --methods checkpoint,reversible
    python bench/rss.py --n 81 --arch convnet --in-shape 3,32,32 --classes 10   # CIFAR-sized, no data files
    python bench/rss.py --n 101 --arch lenet --data digits-images

(`memdistill profile` sweeps several n and writes CSV and a plot.)
"""
from __future__ import annotations

import argparse

from memdistill.apps.profiling import format_table, make_problem, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="inner steps")
    ap.add_argument("--arch", help="any memdistill arch name (default: the MLP of --width and --depth)")
    ap.add_argument("--width", type=int, help="default MLP's hidden width (default 256)")
    ap.add_argument("--depth", type=int, help="default MLP's hidden layers (default 3)")
    ap.add_argument("--data", help="data set name or path (default: random inputs)")
    ap.add_argument("--data-root")
    ap.add_argument("--in-shape", help="random inputs of this shape, e.g. 3,32,32")
    ap.add_argument("--classes", type=int)
    ap.add_argument("--per-class", type=int)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--methods", default="autograd,replay,checkpoint,reversible")
    a = ap.parse_args()
    problem = make_problem(a.arch, width=a.width, depth=a.depth, data=a.data, data_root=a.data_root,
                           in_shape=a.in_shape, classes=a.classes, per_class=a.per_class)
    rows = profile([a.n], a.methods.split(","), momentum=a.momentum, problem=problem)
    print(f"{problem.describe()}, momentum {a.momentum}, one thread, fresh process per row")
    print(format_table(rows))


if __name__ == "__main__":
    main()
