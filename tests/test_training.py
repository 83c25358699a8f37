"""Strategies' learning-rate sequences and training on distilled data."""

import pytest
import torch

from memdistill.distill.distilled import DistilledData
from memdistill.distill.training import (
    run_inner_loop,
    schedule,
    strategy1_lrs,
    strategy2_lrs,
    strategy3_lrs,
    train_on,
)
from memdistill.engine.steps.generic import default_loss
from memdistill.models import fresh_model, mlp

LEARNED = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)  # s = 2, e = 3


def test_strategy1_warms_up_for_ten_epochs_then_decays():
    lrs = strategy1_lrs(2)
    assert lrs.shape == (100,) and lrs.dtype == torch.float64
    per_epoch = lrs[::2].tolist()
    assert lrs[1::2].tolist() == per_epoch  # constant within an epoch
    assert per_epoch[0] == 0.3
    assert per_epoch[1] == pytest.approx(0.33, rel=1e-15)
    assert per_epoch[10] == pytest.approx(0.3 * 1.1**10, rel=1e-15) == max(per_epoch)
    assert per_epoch[11] == pytest.approx(0.3 * 1.1**10 * 0.95, rel=1e-15)
    assert per_epoch[49] == pytest.approx(0.3 * 1.1**10 * 0.95**39, rel=1e-15)
    custom = strategy1_lrs(1, total_epochs=4, eta0=1.0, warmup=2.0, warmup_epochs=2, decay=0.5)
    assert custom.tolist() == [1.0, 2.0, 4.0, 2.0]


def test_strategy2_repeats_the_learned_schedule_with_decay():
    lrs = strategy2_lrs(LEARNED, 2, total_epochs=7)
    expected = LEARNED.tolist() + [0.98 * v for v in LEARNED.tolist()] + [0.98**2 * 0.1, 0.98**2 * 0.2]
    assert lrs.shape == (14,)
    assert lrs.tolist() == pytest.approx(expected, rel=1e-15)
    assert strategy2_lrs(LEARNED, 2, total_epochs=30).shape == (60,)
    assert strategy2_lrs(LEARNED, 2, total_epochs=30)[-1] == pytest.approx(0.6 * 0.98**9, rel=1e-15)


def test_strategy3_repeats_only_the_last_epoch_compounding():
    lrs = strategy3_lrs(LEARNED, 2, total_epochs=6)
    expected = LEARNED.tolist() + [
        0.98 * 0.5,
        0.98 * 0.6,
        0.98**2 * 0.5,
        0.98**2 * 0.6,
        0.98**3 * 0.5,
        0.98**3 * 0.6,
    ]
    assert lrs.tolist() == pytest.approx(expected, rel=1e-15)
    assert torch.equal(strategy3_lrs(LEARNED, 2, total_epochs=3), LEARNED)
    assert strategy3_lrs(LEARNED, 2).shape == (100,)


def test_schedule_dispatch_and_unknown_strategy():
    data = DistilledData(torch.zeros(2, 4, 2), torch.zeros(2, 4, dtype=torch.int64), LEARNED.float())
    assert torch.equal(schedule(data), LEARNED.float().double())
    assert torch.equal(schedule(data, "none"), schedule(data, None))
    assert torch.equal(schedule(data, "s1"), strategy1_lrs(2))
    assert torch.equal(
        schedule(data, "s2", total_epochs=9), strategy2_lrs(LEARNED.float(), 2, total_epochs=9)
    )
    with pytest.raises(ValueError, match="unknown strategy 's4'"):
        schedule(data, "s4")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_inner_loop_matches_torch_sgd(momentum):
    torch.manual_seed(0)
    x, y = torch.randn(3, 8, 2), torch.randint(0, 2, (3, 8))
    lrs = torch.tensor([0.5, 0.1, 0.3, 0.2, 0.05])
    ours = run_inner_loop(fresh_model(mlp("2-layer"), 1), x, y, lrs, momentum)
    reference = fresh_model(mlp("2-layer"), 1)
    optimiser = torch.optim.SGD(reference.parameters(), lr=1.0, momentum=momentum)
    for k, lr in enumerate(lrs.tolist()):
        optimiser.param_groups[0]["lr"] = lr
        optimiser.zero_grad()
        default_loss(reference(x[k % 3]), y[k % 3]).backward()
        optimiser.step()
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_train_on_is_seeded_and_uses_the_data_dtype():
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    data = DistilledData(x, torch.tensor([[0, 0, 1, 1]] * 2), LEARNED, {"momentum": 0.5})
    first, again, other = (train_on(data, mlp("2-layer"), "s3", seed) for seed in (0, 0, 1))
    assert first[0].weight.dtype == torch.float64
    assert torch.equal(first[0].weight, again[0].weight)
    assert not torch.equal(first[0].weight, other[0].weight)
    untrained = fresh_model(mlp("2-layer"), 0, torch.float64)
    assert not torch.equal(first[0].weight, untrained[0].weight)


def _hand_lrs(strategy: str, total_epochs: int) -> list[float]:
    """The rates of each strategy for s = 2, the learned LEARNED (e = 3), written out per step."""
    learned = LEARNED.tolist()
    if strategy == "none":
        return learned
    if strategy == "s1":  # 0.3, ×1.1 per epoch for 10 epochs, then ×0.95 per epoch; constant in an epoch
        return [0.3 * 1.1 ** min(e, 10) * 0.95 ** max(e - 10, 0) for e in range(total_epochs) for _ in range(2)]
    if strategy == "s2":  # the learned 3 epochs again and again, ×0.98 per repetition
        return [0.98 ** (k // 6) * learned[k % 6] for k in range(2 * total_epochs)]
    # s3: the learned 3 epochs, then the last epoch's two rates ×0.98 more each epoch
    return learned + [0.98 ** (e - 2) * learned[4 + i] for e in range(3, total_epochs) for i in range(2)]


@pytest.mark.parametrize("strategy", ["none", "s1", "s2", "s3"])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_train_on_applies_the_strategy_and_the_momentum(strategy, momentum):
    """train_on equals a hand loop: the strategy's rates, the recorded momentum, batch k % s."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    data = DistilledData(x, y, LEARNED, {"momentum": momentum})
    trained = train_on(data, mlp("2-layer"), strategy, seed=4, total_epochs=12)
    model = fresh_model(mlp("2-layer"), 4, torch.float64)
    params, velocity = list(model.parameters()), [torch.zeros_like(p) for p in model.parameters()]
    lrs = _hand_lrs(strategy, 12)
    assert len(lrs) == (6 if strategy == "none" else 24)
    for k, lr in enumerate(lrs):
        z = model(x[k % 2]).squeeze(-1)
        loss = (z.clamp(min=0) - z * y[k % 2] + torch.log1p(torch.exp(-z.abs()))).mean()  # BCE with logits
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, v, g_ in zip(params, velocity, grads):
                v.mul_(momentum).add_(g_)
                p.sub_(lr * v)
    for ours, hand in zip(trained.parameters(), params):
        torch.testing.assert_close(ours, hand, rtol=1e-12, atol=1e-14)
    if momentum:  # the momentum matters: the same rates without it end elsewhere
        plain = train_on(DistilledData(x, y, LEARNED, {"momentum": 0.0}), mlp("2-layer"), strategy, seed=4,
                         total_epochs=12)
        assert max(float((a - b).detach().abs().max()) for a, b in zip(plain.parameters(), params)) > 1e-3
