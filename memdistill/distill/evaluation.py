"""Evaluation: accuracy, mean ± std with a 95% bootstrap interval, the full-data baseline.

The full-data baseline (PAPER.md: 25 initialisations × 500 epochs) trains with plain
full-batch gradient descent, ``θ ← θ − 0.1 ∇θ l(X_train, θ)``, one step per epoch: the
optimiser of the inner loop, on all the training data. The paper does not say which
optimiser it used; this choice gives two moons test accuracies near 0.89 (1-layer),
0.90–0.91 (2-layer) and ≈1.0 (4-layer). Adam would train the 2-layer network to ≈1.0.

:func:`distilled_accuracies` and :func:`baseline_accuracies` train their models of one
architecture together, as the rows of θ [B, P] (:func:`memdistill.distill.training.train_rows`,
:func:`train_full_rows`), and test each row with :func:`row_accuracies`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from memdistill.data import Dataset
from memdistill.distill.distilled import DistilledData
from memdistill.distill.training import batchable, load_rows, schedule, stack_rows, train_on, train_rows, train_sets
from memdistill.engine.hypergradient import make_step
from memdistill.engine.steps.generic import GenericStep, default_loss
from memdistill.models import fresh_model

Summary = dict[str, float | list[float]]


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class ids [N] for inputs x [N, *in_shape]: logit > 0 for one output, else argmax."""
    first = next(model.parameters())
    with torch.no_grad():
        return _classes(model(x.to(first.device, first.dtype)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the N points whose predicted class equals ``y`` [N]."""
    return float((predict(model, x) == y.cpu()).double().mean())


def _classes(out: torch.Tensor) -> torch.Tensor:
    """Class ids [...] on the CPU of logits [..., 1 or C]: logit > 0, or the argmax."""
    return ((out.squeeze(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(-1)).cpu()


def predict_rows(step: GenericStep, theta: torch.Tensor, x: torch.Tensor, *, batched: bool = False) -> torch.Tensor:
    """Class ids [B, N] of the B models θ [B, P] (the layout of ``step``) for inputs x [N, *in_shape].

    ``batched=False``: one ``step.forward`` per row, the same computation as :func:`predict` on a
    model holding the row (identical logits); True: one ``torch.func.vmap``-ed forward of the B
    rows (batched kernels: the logits may differ from the row's in the last bits), the loop if
    the module refuses the transform.
    """
    x = x.to(theta.device, theta.dtype)
    with torch.no_grad():
        if batched:
            try:
                return _classes(torch.func.vmap(step.forward, in_dims=(0, None))(theta, x))
            except (RuntimeError, NotImplementedError, ValueError, TypeError):
                pass
        return torch.stack([_classes(step.forward(row, x)) for row in theta])


def row_accuracies(
    step: GenericStep, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, batched: bool = False
) -> list[float]:
    """:func:`accuracy` of each of the B models θ [B, P]; ``batched`` as in :func:`predict_rows`."""
    return (predict_rows(step, theta, x, batched=batched) == y.cpu()).double().mean(1).tolist()


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> list[float]:
    """Percentile bootstrap interval [low, high] of the mean (numpy Generator, fixed seed)."""
    data = np.asarray(values, dtype=np.float64)
    means = data[np.random.default_rng(seed).integers(0, data.size, (resamples, data.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def summarize(values: Sequence[float], *, seed: int = 0) -> Summary:
    """``{"mean", "std" (sample, ddof=1; 0 for one value), "ci95": [low, high], "n"}``."""
    if len(values) == 0:
        raise ValueError("summarize: values must hold at least one number, got none")
    data = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "ci95": bootstrap_ci(data, seed=seed),
        "n": int(data.size),
    }


def summarize_table(
    by_strategy: Mapping[str, Mapping[str, Sequence[float]]],
) -> dict[str, dict[str, Summary]]:
    """:func:`summarize` of every cell of a ``{strategy: {arch: accuracies}}`` table."""
    return {s: {name: summarize(values) for name, values in by_arch.items()} for s, by_arch in by_strategy.items()}


def median_index(values: Sequence[float]) -> int:
    """Index of a median value (the lower one for an even count)."""
    order = np.argsort(np.asarray(values), kind="stable")
    return int(order[(len(order) - 1) // 2])


FULL_STEP_COST = 4
"""Cost of one step of the full-data baseline relative to one step on a synthetic batch (the
progress units of :func:`training_steps` and :func:`baseline_steps`; measured on two moons)."""


def training_steps(data: DistilledData, strategy: str | None, **strategy_constants: float) -> int:
    """Inner steps of a model trained on ``data`` with ``strategy``: the length of its schedule."""
    return len(schedule(data, strategy, **strategy_constants))


def baseline_steps(
    dataset: Dataset, *, epochs: int = 500, batch_size: int | None = None, max_steps: int | None = None, **_: Any
) -> int:
    """Gradient steps of one full-data baseline model (:func:`train_full`'s arguments)."""
    per_epoch = 1 if batch_size is None else -(-len(dataset.x_train) // batch_size)
    return min(epochs * per_epoch, max_steps or epochs * per_epoch)


def minibatches(n: int, batch_size: int | None, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """Index tensors of ``epochs`` passes over n objects: all of them in order (batch_size None),
    or shuffled minibatches, each pass a fresh permutation drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if batch_size else torch.arange(n)
        yield from order.split(batch_size or n)


def train_full(
    dataset: Dataset,
    arch: Callable[[], nn.Module],
    seed: int,
    *,
    epochs: int = 500,
    lr: float = 0.1,
    batch_size: int | None = None,
    momentum: float = 0.0,
    max_steps: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A fresh model (seed) trained on all of ``dataset.x_train`` with SGD.

    ``batch_size=None``: ``epochs`` full-batch gradient steps (the paper's tabular baseline);
    else ``epochs`` passes of shuffled minibatches (order drawn from ``seed``), the image baseline,
    stopped after ``max_steps`` minibatches if given (60,000 MNIST images need far fewer epochs
    than 1,198 digits).
    """
    model = fresh_model(arch, seed).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    for batch in itertools.islice(minibatches(len(x), batch_size, epochs, seed), max_steps):
        optimiser.zero_grad()
        default_loss(model(x[batch.to(device)]), y[batch.to(device)]).backward()
        optimiser.step()
    return model


def train_full_rows(
    dataset: Dataset,
    arch: Callable[[], nn.Module],
    seeds: Sequence[int],
    *,
    epochs: int = 500,
    lr: float = 0.1,
    batch_size: int | None = None,
    momentum: float = 0.0,
    max_steps: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[GenericStep, torch.Tensor, list[nn.Module]] | None:
    """:func:`train_full` for the seeds at once: (step, θ [B, P] trained, the fresh models), or
    None when the architecture cannot be batched (buffers or frozen parameters).

    The arithmetic of ``torch.optim.SGD`` on the rows (``v ← g`` first, then ``v ← γ v + g``;
    ``θ ← θ − lr·v``); full batch: every row sees all of x_train; minibatches: row i sees the
    shuffled batches drawn from seed i (a per-model step, x [B, b, *in])."""
    models = [fresh_model(arch, seed).to(device) for seed in seeds]
    if not models or not batchable(models[0]):
        return None
    step = make_step(models[0], None, per_model=batch_size is not None)
    theta = stack_rows(step, models)
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    orders = zip(*(itertools.islice(minibatches(len(x), batch_size, epochs, seed), max_steps) for seed in seeds))
    velocity = None
    with step.no_graph():
        for batches in orders:
            if batch_size is None:
                grads = step.grad(theta, x[batches[0].to(device)], y[batches[0].to(device)])
            else:
                index = torch.stack(batches).to(device)
                grads = step.grad(theta, x[index], y[index])
            if momentum:
                velocity = grads.clone() if velocity is None else velocity.mul_(momentum).add_(grads)
                grads = velocity
            theta.add_(grads, alpha=-lr)
    return step, theta, models


def train_full_many(dataset: Dataset, arch: Callable[[], nn.Module], seeds: Sequence[int], **training: Any) -> list[nn.Module]:
    """``[train_full(dataset, arch, seed, **training) for seed in seeds]``, trained as rows of one
    batch (:func:`train_full_rows`; one at a time for an architecture that cannot be batched)."""
    trained = train_full_rows(dataset, arch, seeds, **training)
    if trained is None:
        return [train_full(dataset, arch, seed, **training) for seed in seeds]
    step, theta, models = trained
    return load_rows(step, theta, models)


def baseline_accuracies(
    dataset: Dataset,
    arch: Callable[[], nn.Module],
    *,
    inits: int = 25,
    seed: int = 0,
    **training: Any,
) -> list[float]:
    """Test accuracies of the full-data baseline: model i is ``train_full(…, seed + i, **training)``
    (``epochs``, ``lr``, ``batch_size``, ``momentum``, ``max_steps``, ``device``); the models
    train together (:func:`train_full_rows`)."""
    trained = train_full_rows(dataset, arch, range(seed, seed + inits), **training)
    if trained is not None:
        step, theta, _ = trained
        return row_accuracies(step, theta, dataset.x_test, dataset.y_test)
    return [
        accuracy(train_full(dataset, arch, seed + i, **training), dataset.x_test, dataset.y_test)
        for i in range(inits)
    ]


def distilled_accuracies(
    data: DistilledData,
    dataset: Dataset,
    arch: Callable[[], nn.Module],
    strategy: str | None,
    *,
    inits: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> list[float]:
    """Test accuracies of models trained on ``data``: model i is ``train_on(…, seed + i)``; the
    models train together (:func:`memdistill.distill.training.train_rows`)."""
    trained = train_rows(data, arch, range(seed, seed + inits), strategy, device=device, **strategy_constants)
    if trained is not None:
        step, theta, _ = trained
        return row_accuracies(step, theta, dataset.x_test, dataset.y_test)
    return [
        accuracy(
            train_on(data, arch, strategy, seed + i, device=device, **strategy_constants),
            dataset.x_test,
            dataset.y_test,
        )
        for i in range(inits)
    ]


def distilled_accuracies_of_sets(
    datas: Sequence[DistilledData],
    dataset: Dataset,
    arch: Callable[[], nn.Module],
    strategy: str | None,
    *,
    inits: int = 1,
    seeds: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> list[list[float]]:
    """``[distilled_accuracies(data_i, …, seed=seeds[i]) for data_i in datas]`` (same numbers), the
    models of every set trained together (:func:`memdistill.distill.training.train_sets`);
    ``seeds`` default: set i's models start from seeds i·inits, …, (i + 1)·inits − 1."""
    seeds = [i * inits for i in range(len(datas))] if seeds is None else list(seeds)
    trained = train_sets(datas, arch, [range(seed, seed + inits) for seed in seeds], strategy, device=device,
                         **strategy_constants)
    if trained is None:
        return [distilled_accuracies(data, dataset, arch, strategy, inits=inits, seed=seed, device=device,
                                     **strategy_constants) for data, seed in zip(datas, seeds)]
    step, theta = trained
    accs = row_accuracies(step, theta, dataset.x_test, dataset.y_test)
    return [accs[i * inits:(i + 1) * inits] for i in range(len(datas))]
