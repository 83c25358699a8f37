"""pytest-benchmark: training fresh models one at a time against as rows of one batch: ``pytest bench``.

(a) 25 fresh 4-layer MLPs (2-10-10-10-1) trained on moons-distilled data (s = 40, e = 5, one
    outer step of distillation: the values do not matter for the time) with strategy s1
    (50 epochs × 40 steps = 2,000 steps): ``[train_on(...) for seed]`` against ``train_many``.
(b) The full-data baseline: 25 2-layer MLPs, 500 full-batch steps on moons:
    ``[train_full(...) for seed]`` against ``train_full_many``.
(c) What reproduce tests per source: 10 restarts' distilled sets, 5 fresh 4-layer MLPs each, s1:
    set by set (``train_rows``, 5 rows at a time) against all sets at once (``train_sets``, 50 rows).
CPU, one thread, float32, rounds=3. Divide the "one by one" row by the "batched" row of its group.
"""
from __future__ import annotations

import pytest
import torch

from memdistill.data import load_dataset
from memdistill.distill.distiller import Distiller
from memdistill.distill.evaluation import train_full, train_full_many
from memdistill.distill.training import train_many, train_on, train_rows, train_sets
from memdistill.models import mlp

torch.set_num_threads(1)
MOONS = load_dataset("moons")
MODELS = 25


@pytest.fixture(scope="module")
def distilled():
    distiller = Distiller([mlp("4-layer")], steps=40, epochs=5, seed=0, progress=False)
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_steps=1, batch_size=64)


@pytest.mark.parametrize("how", ["one by one", "batched"])
def test_distilled_s1(benchmark, distilled, how):
    benchmark.group = "(a) 25 x 4-layer MLP, s1 on moons-distilled data (2,000 steps)"
    arch = mlp("4-layer")
    if how == "batched":
        models = benchmark.pedantic(lambda: train_many(distilled, arch, range(MODELS), "s1"), rounds=3)
    else:
        models = benchmark.pedantic(lambda: [train_on(distilled, arch, "s1", i) for i in range(MODELS)], rounds=3)
    assert len(models) == MODELS


@pytest.mark.parametrize("how", ["one by one", "batched"])
def test_full_data_baseline(benchmark, how):
    benchmark.group = "(b) 25 x 2-layer MLP, full-data baseline on moons (500 full-batch steps)"
    arch = mlp("2-layer")
    if how == "batched":
        models = benchmark.pedantic(lambda: train_full_many(MOONS, arch, range(MODELS)), rounds=3)
    else:
        models = benchmark.pedantic(lambda: [train_full(MOONS, arch, i) for i in range(MODELS)], rounds=3)
    assert len(models) == MODELS


@pytest.fixture(scope="module")
def restarts():
    distiller = Distiller([mlp("4-layer")], steps=40, epochs=5, seed=0, restarts=10, progress=False)
    return distiller.fit(MOONS.x_train, MOONS.y_train, outer_steps=1, batch_size=64)


@pytest.mark.parametrize("how", ["set by set", "all sets at once"])
def test_restarts_s1(benchmark, restarts, how):
    benchmark.group = "(c) 10 restarts x 5 x 4-layer MLP, s1 (2,000 steps)"
    arch, seeds = mlp("4-layer"), [range(5 * r, 5 * r + 5) for r in range(10)]
    if how == "all sets at once":
        benchmark.pedantic(lambda: train_sets(restarts, arch, seeds, "s1"), rounds=3)
    else:
        benchmark.pedantic(lambda: [train_rows(d, arch, s, "s1") for d, s in zip(restarts, seeds)], rounds=3)
