"""The batched generic step (vmap over the parameter rows) against its loop, both second-order
modes against each other, every method against autograd on it, and restarts / internal models
of any architecture in one sweep (float64)."""
from __future__ import annotations

import pytest
import torch
from conftest import ConvNet, make_problem, mlp, rel
from torch import nn

import memdistill as md
from memdistill.distill.batching import architecture, hypergradients, shape_groups
from memdistill.engine.hypergradient import sweep
from memdistill.engine.loop import Data
from memdistill.engine.steps.generic import GenericStep
from memdistill.models import convnet, fresh_model, lenet

DT = torch.float64


class Branchy(nn.Module):
    """Data-dependent control flow: vmap refuses it, the step falls back to its loop."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h if h.sum() > 0 else -h)


# name: (factory of a float64 module, in_shape, classes)
MODELS = {
    "lenet": (lambda seed: fresh_model(lenet((1, 8, 8), 3), seed, DT), (1, 8, 8), 3),
    "layernorm-gelu": (lambda seed: (torch.manual_seed(seed), ConvNet(3).to(DT))[1], (1, 6), 3),
    "convnet-instance": (lambda seed: fresh_model(convnet((2, 4, 4), 3, depth=1, width=4), seed, DT), (2, 4, 4), 3),
    "convnet-batch": (lambda seed: fresh_model(convnet((2, 4, 4), 3, depth=1, width=4, norm="batch"), seed, DT),
                      (2, 4, 4), 3),
    "mlp": (lambda seed: (torch.manual_seed(seed), mlp([2, 6, 5, 1]).to(DT))[1], (2,), 2),
    "branchy": (lambda seed: (torch.manual_seed(seed), Branchy().to(DT))[1], (2,), 3),
}


def batch(model: str, labels: str, per_model: bool, B: int = 3, b: int = 4):
    build, in_shape, classes = MODELS[model]
    net = build(0)
    g = torch.Generator().manual_seed(1)
    theta = GenericStep(net).flatten() + 0.05 * torch.randn(B, GenericStep(net).flatten().shape[1], generator=g,
                                                             dtype=DT)
    lead = (B, b) if per_model else (b,)
    x = torch.randn(*lead, *in_shape, generator=g, dtype=DT)
    if labels == "int":
        y = torch.randint(0, classes, lead, generator=g)
    elif classes == 2:
        y = torch.rand(*lead, generator=g, dtype=DT)
    else:
        y = torch.rand(*lead, classes, generator=g, dtype=DT).softmax(-1)
    return net, theta, torch.randn(theta.shape, generator=g, dtype=DT), x, y


# ----------------------------------------------------------------------------- products


@pytest.mark.parametrize("second_order", ["reverse", "forward"])
@pytest.mark.parametrize("per_model", [False, True])
@pytest.mark.parametrize("labels", ["int", "soft"])
@pytest.mark.parametrize("model", list(MODELS))
def test_batched_products_equal_the_loop(model, labels, per_model, second_order):
    net, theta, w, x, y = batch(model, labels, per_model)
    fast = GenericStep(net, second_order=second_order, per_model=per_model)
    loop = GenericStep(net, batched=False, per_model=per_model)   # reverse-over-reverse autograd
    assert rel(fast.loss(theta, x, y), loop.loss(theta, x, y)) <= 1e-12
    for a, b in zip(fast.value_and_grad(theta, x, y), loop.value_and_grad(theta, x, y)):
        assert a.shape == b.shape and rel(a, b) <= 1e-12
    got, ref = fast.reverse(theta, x, y, w), loop.reverse(theta, x, y, w)
    for a, b in zip(got, ref):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.shape == b.shape and rel(a, b) <= 1e-12
    assert (ref[3] is None) == (labels == "int")
    assert fast.batched == (model != "branchy")
    assert fast.why.startswith("vmap" if fast.batched else "loop over the B rows: vmap failed on loss")


def test_forward_and_reverse_second_order_agree_one_row_and_many():
    net, theta, w, x, y = batch("layernorm-gelu", "soft", per_model=True)
    for rows in (slice(0, 1), slice(None)):
        a = GenericStep(net, per_model=True, second_order="forward").reverse(theta[rows], x[rows], y[rows], w[rows])
        b = GenericStep(net, per_model=True, second_order="reverse").reverse(theta[rows], x[rows], y[rows], w[rows])
        assert all(rel(p, q) <= 1e-12 for p, q in zip(a, b))


def test_the_probe_records_its_reason_and_batchnorm_buffers_stay_alone():
    net, theta, w, x, y = batch("convnet-batch", "int", per_model=False)
    before = {k: t.clone() for k, t in net.state_dict().items()}
    step = GenericStep(net)
    assert step.batched and "probed on the first call" in step.why
    step.reverse(theta[:1], x, y, w[:1])            # one row: the loop, nothing probed yet
    assert "probed on the first call" in step.why
    step.reverse(theta, x, y, w)
    assert step.batched and step.why == "vmap over the B rows (torch.func)"
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items()) and net.training
    assert GenericStep(net, batched=False).why.startswith("loop over the B rows: batched=False")
    with pytest.raises(ValueError, match="unknown second_order 'sideways'.*'reverse', 'forward'"):
        GenericStep(net, second_order="sideways")


def test_hypergradient_stats_say_which_path():
    p = make_problem("conv-3class", s=2, epochs=1)
    hg = md.hypergradient(*p.args(), epochs=1)
    assert hg.stats["step"] == "generic" and isinstance(hg.stats["step_batched"], bool) and hg.stats["step_path"]
    fused = md.hypergradient(*make_problem("mlp-binary", s=2, epochs=1).args(), epochs=1, step="fused")
    assert fused.stats["step_batched"] is True and fused.stats["step_path"].startswith("fused")


# ----------------------------------------------------------------------------- exactness

VARIANTS = [("replay", None, 0.0), ("checkpoint", None, 0.0), ("checkpoint", 2, 0.9), ("replay", None, 0.9),
            ("reversible", None, 0.9)]


def many(model: str, B: int = 2, s: int = 5, epochs: int = 1, labels: str = "int"):
    """B models of one architecture, each with its own data: (models, x_syn [B, s, b, ...], ...)."""
    build, in_shape, classes = MODELS[model]
    models = [build(seed) for seed in range(B)]
    g = torch.Generator().manual_seed(2)
    x_syn = torch.randn(B, s, 4, *in_shape, generator=g, dtype=DT)
    x_real = torch.randn(B, 8, *in_shape, generator=g, dtype=DT)
    if labels == "int":
        y_syn, y_real = torch.randint(0, classes, (B, s, 4), generator=g), torch.randint(0, classes, (B, 8), generator=g)
    else:
        y_syn = torch.rand(B, s, 4, classes, generator=g, dtype=DT).softmax(-1)
        y_real = torch.randint(0, classes, (B, 8), generator=g)
    lrs = 0.05 + 0.1 * torch.rand(B, s * epochs, generator=g, dtype=DT)
    return models, x_syn, y_syn, lrs, x_real, y_real


def batched_sweep(models, x_syn, y_syn, lrs, x_real, y_real, method, snapshots, momentum):
    step = GenericStep(models[0], per_model=True)
    data = Data(x_syn.movedim(0, 1), y_syn.movedim(0, 1), x_real, y_real)
    theta0 = torch.cat([step.flatten(m) for m in models])
    _, res = sweep(step, data, lrs.T.unsqueeze(-1).contiguous(), theta0, momentum, method, snapshots)
    return step, res


@pytest.mark.parametrize("model", ["lenet", "layernorm-gelu", "mlp"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_method_on_the_batched_step_equals_autograd(model, momentum):
    args = many(model)                                   # n = 5: odd
    models, x_syn, y_syn, lrs, x_real, y_real = args
    refs = [md.hypergradient(m, x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i], epochs=1, momentum=momentum,
                             method="autograd") for i, m in enumerate(models)]
    # the oracle: autograd through the whole unroll of each model alone; autograd on the B rows
    # at once must give the same numbers
    for method, snapshots, mom in [v for v in VARIANTS if v[2] == momentum] + [("autograd", None, momentum)]:
        step, res = batched_sweep(*args, method, snapshots, mom)
        assert step.batched and step.why.startswith("vmap")
        for i, ref in enumerate(refs):
            assert rel(res.loss[i], ref.loss) <= 1e-9
            assert rel(res.grad_x_syn[:, i], ref.grad_x_syn) <= 1e-9, method
            assert rel(res.grad_lrs[:, i, 0], ref.grad_lrs) <= 1e-9, method
            assert rel(res.grad_theta0[i], torch.cat([g.reshape(-1) for g in ref.grad_params.values()])) <= 1e-9


@pytest.mark.parametrize("method, snapshots", [("checkpoint", 2), ("reversible", None)])
def test_peak_stored_bytes_counts_all_rows(method, snapshots):
    args = many("lenet", B=3)
    one = batched_sweep(*(a[:1] for a in args), method, snapshots, 0.9)[1].peak_stored_bytes
    three = batched_sweep(*args, method, snapshots, 0.9)[1].peak_stored_bytes
    assert one > 0 and three == 3 * one


# ----------------------------------------------------------------------------- grouping


def test_architecture_keys():
    a, b = fresh_model(lenet((1, 8, 8), 3), 0), fresh_model(lenet((1, 8, 8), 3), 1)
    assert architecture(a) == architecture(b) and architecture(a) != architecture(fresh_model(lenet((1, 8, 8), 4), 0))
    padded = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten())
    assert architecture(padded) != architecture(nn.Sequential(nn.Conv2d(1, 2, 3, padding=0), nn.Flatten()))
    assert architecture(ConvNet(3)) != architecture(ConvNet(3).eval())
    frozen = [mlp([2, 3, 1]) for _ in range(3)]
    for m in frozen:
        m[0].weight.requires_grad_(False)
    with torch.no_grad():
        frozen[2][0].weight.add_(1)
    assert shape_groups(frozen) == [[0], [1], [2]]     # frozen weights differ: the constants split them
    torch.manual_seed(0)
    same = [mlp([2, 3, 1]) for _ in range(2)]
    for m in same:
        m[0].weight.requires_grad_(False)
        nn.init.ones_(m[0].weight)
    assert shape_groups([*same, frozen[2]]) == [[0, 1], [2]]


@pytest.mark.parametrize("model, labels", [("lenet", "int"), ("layernorm-gelu", "soft"), ("convnet-instance", "int")])
def test_grouped_rows_equal_each_model_alone(model, labels):
    models, x_syn, y_syn, lrs, x_real, y_real = many(model, B=3, s=3, epochs=1, labels=labels)
    mixed = [models[0], fresh_model(lenet((1, 8, 8), 3), 5, DT) if model != "lenet" else MODELS["mlp"][0](3),
             *models[1:]]
    assert shape_groups(mixed) == [[0, 2, 3], [1]]
    rows = hypergradients(models, x_syn, y_syn, lrs, x_real, y_real, epochs=1, momentum=0.9)
    for i, m in enumerate(models):
        alone = md.hypergradient(m, x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i], epochs=1, momentum=0.9)
        assert rel(rows.loss[i], alone.loss) <= 1e-12
        assert rel(rows.grad_x[i], alone.grad_x_syn) <= 1e-12
        assert rel(rows.grad_lrs[i], alone.grad_lrs) <= 1e-12
        if labels == "soft":
            assert rel(rows.grad_y[i], alone.grad_y_syn) <= 1e-12


def tied_models() -> dict[str, tuple[nn.Module, bool]]:
    """(model, whether functional_call must tie): a Linear used twice, a weight shared by two
    Linears (tying), and neither."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4).double()
    first, second = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()
    second.weight = first.weight
    return {"module used twice": (nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(4, 2).double()), False),
            "weight tying": (nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(4, 2).double()), True),
            "untied": (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).double(), False)}


@pytest.mark.parametrize("name", ["module used twice", "weight tying", "untied"])
@pytest.mark.parametrize("B", [1, 3], ids=["loop", "vmap"])
def test_shared_parameters_get_the_gradient_of_every_use(name, B):
    """One tensor under two names: every path gives the gradient autograd gives the module itself
    (its uses summed), and leaves the module's parameters as they were."""
    model, tying = tied_models()[name]
    before = [(n, p) for n, p in model.named_parameters(remove_duplicate=False)]
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    step = GenericStep(model)
    assert step.tied is tying
    theta = step.flatten().repeat(B, 1)
    _, g = step.value_and_grad(theta, x, y)
    assert [(n, p) for n, p in model.named_parameters(remove_duplicate=False)] == before
    assert all(p.is_leaf for _, p in before)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert g.shape == (B, want.numel()) and rel(g[-1], want) <= 1e-13


class Fails(nn.Module):
    """A module whose forward fails on a negative input, after reading its parameter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x) * self.scale
        if (x < 0).any():
            raise ValueError("negative input")
        return out


def test_loop_binding_restores_the_module_on_success_and_failure():
    """The loop binds a row's values into the module's own slots for the call: afterwards (and
    after a forward that raised) the module holds its own parameter and buffer objects again."""
    model = Fails()
    before = [*model.named_parameters(), *model.named_buffers()]
    step = GenericStep(model, batched=False)
    theta = step.flatten() + 1
    out = step.forward(theta[0], torch.ones(4, 3, dtype=torch.float64))
    want = nn.functional.linear(torch.ones(4, 3, dtype=torch.float64), *[t.view(s) for t, s in
                                zip(theta[0].split(step.sizes), step.shapes)]) * 2
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="negative input"):
        step.forward(theta[0], -torch.ones(4, 3, dtype=torch.float64))
    after = [*model.named_parameters(), *model.named_buffers()]
    assert [n for n, _ in after] == [n for n, _ in before] and all(a is b for (_, a), (_, b) in zip(after, before))
    assert all(p.is_leaf for p in model.parameters())
