"""Wall time of `memdistill batch` on 1 process versus 2 torchrun ranks, one torch thread each.

    python bench/batch_ranks.py                          # bench/batch.toml, 2 ranks
    python bench/batch_ranks.py --job my.toml --ranks 4

Both runs write to fresh folders in a temporary directory; the script checks that every
job's distilled data are bit-identical and prints both wall times and their ratio. With
``--repeat N`` the two alternate N times and the fastest of each counts (the one least slowed
by other work on a shared machine).

    python bench/batch_ranks.py --repeat 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memdistill.apps.batch import DATA_FILE
from memdistill.apps.jobfile import read
from memdistill.distill.distilled import DistilledData


def timed(command: list[str]) -> float:
    """Seconds the command took (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_results(job_file: Path, one: Path, many: Path) -> bool:
    """Whether every job's distilled x, y and lrs are bit-identical in the two output folders."""
    for job in read(job_file).jobs:
        x, y = (DistilledData.load(out / job.name / DATA_FILE) for out in (one, many))
        if not all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("x", "y", "lrs")):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", type=Path, default=Path(__file__).with_name("batch.toml"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two runs this many times")
    a = ap.parse_args()
    batch = ["batch", str(a.job), "--threads", "1", "--no-progress", "--out"]
    torchrun = ["-m", "torch.distributed.run", f"--nproc_per_node={a.ranks}"]
    singles, rankeds = [], []
    for repeat in range(a.repeat):
        with tempfile.TemporaryDirectory() as folder:
            one, many = Path(folder, "one"), Path(folder, "many")
            singles.append(timed([sys.executable, "-m", "memdistill", *batch, str(one)]))
            rankeds.append(timed([sys.executable, *torchrun, "-m", "memdistill", *batch, str(many)]))
            assert same_results(a.job, one, many), "the two runs differ"
        print(
            f"run {repeat + 1}: 1 process {singles[-1]:.1f} s, {a.ranks} ranks {rankeds[-1]:.1f} s",
            flush=True,
        )
    single, ranked = min(singles), min(rankeds)
    print(f"{len(read(a.job).jobs)} jobs, 1 torch thread per process; results bit-identical")
    print(
        f"1 process: {single:.1f} s; {a.ranks} ranks: {ranked:.1f} s; ratio {ranked / single:.2f} (fastest of {a.repeat})"
    )


if __name__ == "__main__":
    main()
