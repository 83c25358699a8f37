"""Wall time of `memdistill batch` on 1 process versus 2 torchrun ranks, one torch thread each.

    python bench/batch_ranks.py                          # bench/batch.toml, 2 ranks
    python bench/batch_ranks.py --job my.toml --ranks 4

Both runs write to fresh folders in a temporary directory; the script checks that every
job's distilled data are bit-identical and prints both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memdistill.batch import DATA_FILE
from memdistill.distilled import DistilledData
from memdistill.jobfile import read


def timed(command: list[str]) -> float:
    """Seconds the command took (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", type=Path, default=Path(__file__).with_name("batch.toml"))
    ap.add_argument("--ranks", type=int, default=2)
    a = ap.parse_args()
    batch = ["batch", str(a.job), "--threads", "1", "--no-progress", "--out"]
    with tempfile.TemporaryDirectory() as folder:
        one, many = Path(folder, "one"), Path(folder, "many")
        single = timed([sys.executable, "-m", "memdistill", *batch, str(one)])
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={a.ranks}",
            "-m",
            "memdistill",
        ]
        ranked = timed([*torchrun, *batch, str(many)])
        for job in read(a.job).jobs:
            x, y = (DistilledData.load(out / job.name / DATA_FILE) for out in (one, many))
            assert all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("x", "y", "lrs")), job.name
    print(f"{len(read(a.job).jobs)} jobs, 1 torch thread per process; results bit-identical")
    print(f"1 process: {single:.1f} s; {a.ranks} ranks: {ranked:.1f} s; ratio {ranked / single:.2f}")


if __name__ == "__main__":
    main()
