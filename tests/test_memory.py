"""Memory scaling: deterministic counts of the bytes each method stores for the reverse pass."""
from __future__ import annotations

import pytest
import torch

import memdistill as md


def stored(n: int, method: str, snapshots=None, momentum=0.9) -> int:
    """peak_stored_bytes for a Linear(2, 1) model (P = 3, float64) and n = 8·(n/8) steps."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()   # the fused step: fast
    x_syn = torch.randn(8, 4, 2, generator=g, dtype=torch.float64)
    y_syn = torch.randint(0, 2, (8, 4), generator=g)
    x, y = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (16,), generator=g)
    lrs = torch.full((n,), 0.01, dtype=torch.float64)
    hg = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=n // 8, momentum=momentum,
                          method=method, snapshots=snapshots)
    return hg.stats["peak_stored_bytes"]


@pytest.fixture(scope="module")
def table():
    return {(m, c, n): stored(n, m, c) for n in (256, 4096)
            for m, c in [("replay", None), ("checkpoint", None), ("checkpoint", 4), ("reversible", None)]}


def test_replay_grows_linearly(table):
    assert table["replay", None, 4096] == 16 * table["replay", None, 256]
    assert table["replay", None, 256] == 256 * 2 * 3 * 8   # n states of (θ, v), 3 float64 each


def test_periodic_checkpoint_grows_as_sqrt_n(table):
    ratio = table["checkpoint", None, 4096] / table["checkpoint", None, 256]
    assert 3.5 <= ratio <= 4.5


def test_binomial_with_fixed_snapshots_stays_flat(table):
    assert table["checkpoint", 4, 4096] == table["checkpoint", 4, 256] == 4 * 2 * 3 * 8


def test_reversible_holds_under_one_hundredth_of_replay(table):
    assert table["reversible", None, 4096] <= table["replay", None, 4096] / 100


def test_autograd_stores_the_most():
    assert stored(256, "autograd") > stored(256, "replay") > stored(256, "checkpoint")
