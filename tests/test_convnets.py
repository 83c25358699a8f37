"""Image architectures (LeNet, ConvNet), architecture names and import strings, and the product:
every method's hypergradient on ConvNets against autograd through the whole unroll (float64)."""
from __future__ import annotations

import pickle
import sys
import textwrap

import pytest
import torch
from conftest import max_rel_error
from torch import nn

import memdistill as md
from memdistill.engine.steps.fused import is_plain_mlp
from memdistill.models import ARCH_NAMES, check_arch, convnet, fresh_model, lenet, mlp, resolve_arch

# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 5, 7)])
@pytest.mark.parametrize("classes, width", [(2, 1), (3, 3), (10, 10)])
def test_lenet_shapes(in_shape, classes, width):
    model = lenet(in_shape, classes)()
    assert model(torch.zeros(2, *in_shape)).shape == (2, width)


def test_lenet_layers_follow_wang_et_al():
    model = lenet((1, 28, 28), 10)()
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [model[i].out_channels for i in (0, 3)] == [6, 16]
    assert [model[i].out_features for i in (7, 9, 11)] == [120, 84, 10]
    assert model[7].in_features == 16 * 7 * 7 and lenet((3, 32, 32))()[7].in_features == 16 * 8 * 8


@pytest.mark.parametrize("in_shape, depth", [((3, 32, 32), 3), ((1, 8, 8), 3), ((1, 8, 8), 1), ((3, 9, 6), 2)])
@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "none"])
def test_convnet_shapes(in_shape, depth, norm):
    model = convnet(in_shape, classes=4, depth=depth, width=8, norm=norm)()
    assert model(torch.zeros(2, *in_shape)).shape == (2, 4)
    assert sum(isinstance(m, nn.Conv2d) for m in model) == depth
    assert sum(isinstance(m, nn.AvgPool2d) for m in model) == depth
    assert convnet(in_shape, classes=2, depth=depth, width=8, norm=norm)()(torch.zeros(2, *in_shape)).shape == (2, 1)


def test_convnet_norm_layers():
    def norms(norm):
        return [m for m in convnet((3, 8, 8), 3, depth=2, width=8, norm=norm)() if not isinstance(
            m, (nn.Conv2d, nn.ReLU, nn.AvgPool2d, nn.Flatten, nn.Linear))]
    instance, layer, batch = norms("instance"), norms("layer"), norms("batch")
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 8 and m.affine for m in instance)
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in layer)
    assert all(isinstance(m, nn.BatchNorm2d) for m in batch) and len(batch) == 2
    assert norms("none") == []


@pytest.mark.parametrize("call, match", [
    (lambda: convnet((1, 8, 8), depth=4), "depth 4 pools images of shape \\[1, 8, 8\\] below 1x1.*depth <= 3"),
    (lambda: convnet((3, 32, 32), depth=0), "depth must be an integer >= 1"),
    (lambda: convnet((3, 32, 32), width=0), "width must be an integer >= 1"),
    (lambda: convnet((3, 32, 32), norm="group"), "unknown norm 'group'.*'instance', 'batch', 'layer', 'none'"),
    (lambda: convnet((32, 32)), "in_shape must be \\(channels, height, width\\)"),
    (lambda: convnet(classes=1), "classes must be an integer >= 2"),
    (lambda: lenet((1, 3, 8)), "at least 4x4"),
    (lambda: lenet((784,)), "in_shape must be \\(channels, height, width\\)"),
])
def test_factory_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_init_is_deterministic_given_the_seed():
    for arch in [lenet((1, 8, 8), 3), convnet((3, 8, 8), 3, depth=2, width=8)]:
        a, b, c = (fresh_model(arch, seed) for seed in (1, 1, 2))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    model = lenet((1, 8, 8), 3)()
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in model if isinstance(layer, (nn.Conv2d, nn.Linear)))


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_builtin_name_resolves(name):
    shape = (2,) if name.endswith("-layer") else (3, 8, 8)
    arch = check_arch(name, shape, 5)
    assert arch.name == name and arch()(torch.zeros(4, *shape)).shape == (4, 5)
    assert pickle.loads(pickle.dumps(arch)) == arch  # picklable: safe to send to worker processes


@pytest.mark.parametrize("factory", [
    lenet((1, 8, 8), 3), convnet((3, 8, 8), 3, depth=2, width=8), convnet((3, 16, 16), 3, depth=4),
    convnet(), convnet((3, 8, 8), 2, width=8), convnet((3, 8, 8), 2, norm="batch"),
])
def test_factory_names_round_trip(factory):
    assert resolve_arch(factory.name, factory.in_shape, factory.classes).build == factory


@pytest.mark.parametrize("name, options", [
    ("convnet", dict(depth=3, width=128, norm="instance")), ("convnet-2", dict(depth=2)),
    ("convnet[width=16]", dict(width=16)), ("convnet[norm=none,depth=1]", dict(norm="none", depth=1)),
    ("convnet[depth=2,width=8,norm=layer]", dict(depth=2, width=8, norm="layer")), ("convnet[]", {}),
])
def test_convnet_names(name, options):
    assert resolve_arch(name, (3, 8, 8), 3).build == convnet((3, 8, 8), 3, **options)


def test_mlp_names_keep_the_plain_form_for_vectors_and_flatten_images():
    vector = resolve_arch("2-layer", (2,), 2)
    assert vector.build == mlp("2-layer", 2, 1) and is_plain_mlp(vector())
    image = resolve_arch("mlp[16,8]", (1, 8, 8), 3)
    model = image()
    assert isinstance(model[0], nn.Flatten) and not is_plain_mlp(model)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 3)
    plain = fresh_model(mlp([16, 8], 64, 3), 7)  # same seed, same weights: Flatten has none
    assert all(torch.equal(p, q) for p, q in zip(fresh_model(image, 7).parameters(), plain.parameters()))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``user_archs`` on sys.path with factories called as f(in_shape, classes)."""
    (tmp_path / "user_archs.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        def tiny(in_shape, classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), 1 if classes == 2 else classes))

        def wide(in_shape, classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), classes + 1))

        def vector_only(in_shape, classes):
            return nn.Linear(5, classes)

        def not_a_module(in_shape, classes):
            return 3

        class Factories:
            @staticmethod
            def tiny(in_shape, classes):
                return tiny(in_shape, classes)

        VALUE = 3
    """))
    (tmp_path / "broken_archs.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("user_archs", "broken_archs"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield "user_archs"
    for name in ("user_archs", "broken_archs"):
        sys.modules.pop(name, None)


def test_import_string(user_module):
    arch = check_arch(f"{user_module}:tiny", (1, 8, 8), 3)
    assert arch.name == "user_archs:tiny" and arch()(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert arch() is not arch()  # a fresh module per build
    assert check_arch("user_archs:Factories.tiny", (2,), 2)()(torch.zeros(2, 2)).shape == (2, 1)
    a, b = fresh_model(arch, 4), fresh_model(arch, 4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name, in_shape, error, match", [
    ("resnet", (3, 8, 8), ValueError,
     "resolve_arch: unknown arch name 'resnet'; expected one of 'N-layer', 'mlp\\[w1,w2,...\\]', 'lenet', "
     "'convnet'.*import string 'package.module:function'"),
    ("convnet[colour=red]", (3, 8, 8), ValueError, "cannot read 'colour=red' in arch name"),
    ("convnet[depth=two]", (3, 8, 8), ValueError, "depth must be a positive integer in arch name"),
    ("convnet-5", (3, 8, 8), ValueError, "arch 'convnet-5' cannot be built for in_shape \\[3, 8, 8\\].*below 1x1"),
    ("lenet", (2,), ValueError, "arch 'lenet' cannot be built for in_shape \\[2\\]"),
    ("no_such_module_xyz:f", (2,), ValueError, "cannot import module 'no_such_module_xyz'.*ModuleNotFoundError"),
    ("broken_archs:f", (2,), ValueError, "cannot import module 'broken_archs'.*RuntimeError: boom at import"),
    ("user_archs:missing", (2,), ValueError, "module 'user_archs' has no attribute 'missing'"),
    ("user_archs:VALUE", (2,), ValueError, "'user_archs:VALUE' is a int, not a function"),
    ("user_archs:not_a_module", (2,), ValueError, "arch 'user_archs:not_a_module': the factory returned int.*nn.Module"),
    ("user_archs:wide", (1, 8, 8), ValueError,
     "arch 'user_archs:wide' on inputs of shape \\[1, 8, 8\\] produced \\[1, 4\\]; expected \\[1, 3\\]"),
    ("user_archs:vector_only", (3, 6, 6), ValueError,
     "arch 'user_archs:vector_only' does not take inputs of shape \\[3, 6, 6\\]: RuntimeError"),
])
def test_arch_errors(user_module, name, in_shape, error, match):
    with pytest.raises(error, match=match):
        check_arch(name, in_shape, 3)


@pytest.mark.parametrize("in_shape, classes, match", [
    ((), 3, "in_shape must be a non-empty tuple of positive ints"), ((3, 0, 8), 3, "in_shape"),
    ((2,), 1, "classes must be an integer >= 2"),
])
def test_resolve_arch_argument_errors(in_shape, classes, match):
    with pytest.raises(ValueError, match=match):
        resolve_arch("2-layer", in_shape, classes)


def test_resolve_arch_needs_a_string():
    with pytest.raises(TypeError, match="name must be a string"):
        resolve_arch(lenet(), (1, 28, 28), 10)


# ----------------------------------------------------------------------------- exactness

MODELS = {
    "lenet": lenet((1, 8, 8), 3),
    "convnet-instance": convnet((3, 8, 8), 3, depth=2, width=8),
    "convnet-batch": convnet((3, 8, 8), 3, depth=2, width=8, norm="batch"),
}
# method, snapshots, momentum ("reversible" needs momentum > 0)
VARIANTS = [("replay", None, 0.0), ("replay", None, 0.9), ("checkpoint", None, 0.0), ("checkpoint", None, 0.9),
            ("checkpoint", 2, 0.9), ("reversible", None, 0.9)]
MOMENTUM_09 = [v for v in VARIANTS if v[2] == 0.9]
CASES = ([("lenet", "int", *v) for v in VARIANTS] + [("convnet-instance", "int", *v) for v in VARIANTS]
         + [("lenet", "soft", *v) for v in MOMENTUM_09] + [("convnet-batch", "int", *v) for v in MOMENTUM_09]
         + [("convnet-batch", "int", "checkpoint", None, 0.0)])


def image_problem(model, labels: str = "int", *, s: int = 3, b: int = 4, epochs: int = 3, n_real: int = 8,
                  seed: int = 0, device: str = "cpu", lr: float = 0.1):
    """(args of md.hypergradient, epochs) for a key of MODELS or a factory: float64, x ~ N(0, 1),
    lrs in lr · [0.5, 1.5)."""
    arch = MODELS[model] if isinstance(model, str) else model
    g = torch.Generator().manual_seed(seed)
    net = fresh_model(arch, seed, torch.float64)
    x_syn = torch.randn(s, b, *arch.in_shape, generator=g, dtype=torch.float64)
    x_real = torch.randn(n_real, *arch.in_shape, generator=g, dtype=torch.float64)
    if labels == "int":
        y_syn, y_real = (torch.randint(0, arch.classes, lead, generator=g) for lead in [(s, b), (n_real,)])
    else:
        y_syn = torch.rand(s, b, arch.classes, generator=g, dtype=torch.float64).softmax(-1)
        y_real = torch.randint(0, arch.classes, (n_real,), generator=g)
    lrs = lr * (0.5 + torch.rand(s * epochs, generator=g, dtype=torch.float64))
    args = [t.to(device) for t in (net, x_syn, y_syn, lrs, x_real, y_real)]
    return args, epochs


@pytest.mark.parametrize("model, labels, method, snapshots, momentum", CASES)
def test_equals_autograd_float64(model, labels, method, snapshots, momentum):
    args, epochs = image_problem(model, labels)   # s = 3, epochs = 3: n = 9, odd
    kw = dict(epochs=epochs, momentum=momentum)
    ref = md.hypergradient(*args, method="autograd", **kw)
    hg = md.hypergradient(*args, method=method, snapshots=snapshots, **kw)
    assert max_rel_error(hg, ref) <= 1e-9
    assert ref.grad_x_syn.abs().sum() > 0 and ref.grad_lrs.abs().sum() > 0   # a non-trivial check
    assert all(g.abs().sum() > 0 for k, g in ref.grad_params.items() if not k.endswith(".bias"))
    assert (ref.grad_y_syn is not None) == (labels == "soft")
    assert hg.stats["steps"] == 9 and hg.stats["step"] == "generic"


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_a_conv_bias_before_a_per_channel_norm_gets_no_gradient(norm):
    """Instance and batch norm subtract each channel's mean, the conv bias with it: ∂L/∂bias = 0
    exactly, and every method returns rounding noise there (hence the floor of max_rel_error)."""
    arch = convnet((3, 8, 8), 3, depth=2, width=8, norm=norm)
    args, epochs = image_problem(arch)
    ref = md.hypergradient(*args, epochs=epochs, momentum=0.9, method="autograd")
    whole = torch.cat([g.reshape(-1) for g in ref.grad_params.values()]).norm()
    model = args[0]
    conv_bias = [ref.grad_params[f"{i}.bias"].norm() / whole for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    assert len(conv_bias) == 2
    if norm == "none":
        assert min(conv_bias) > 1e-3
    else:
        assert max(conv_bias) < 1e-14


@pytest.mark.parametrize("method", ["autograd", "replay", "checkpoint", "reversible"])
def test_batchnorm_buffers_are_left_alone(method):
    """Training-mode BN normalises with batch statistics: the caller's running stats stay as they were."""
    args, epochs = image_problem("convnet-batch")
    before = {k: t.clone() for k, t in args[0].state_dict().items()}
    md.hypergradient(*args, epochs=epochs, momentum=0.9, method=method)
    assert all(torch.equal(t, before[k]) for k, t in args[0].state_dict().items())
    assert args[0].training


def test_gradcheck_of_the_unrolled_loss_on_a_convnet():
    arch = convnet((1, 4, 4), 3, depth=1, width=2)
    model = fresh_model(arch, 0, torch.float64)
    g = torch.Generator().manual_seed(1)
    x_syn = torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64)
    x_real = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    y_syn, y_real = torch.randint(0, 3, (2, 3), generator=g), torch.randint(0, 3, (5,), generator=g)
    lrs = (0.1 + 0.1 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_()

    def loss(lr):
        return md.unrolled_loss(model, x_syn, y_syn, lr, x_real, y_real, epochs=2, momentum=0.5, method="checkpoint")

    assert torch.autograd.gradcheck(loss, (lrs,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("model, method", [("lenet", "checkpoint"), ("convnet-instance", "reversible")])
def test_cuda_matches_cpu(model, method):
    args, epochs = image_problem(model)
    cuda, _ = image_problem(model, device="cuda")
    hg = md.hypergradient(*cuda, epochs=epochs, momentum=0.9, method=method)
    ref = md.hypergradient(*args, epochs=epochs, momentum=0.9, method="autograd")
    assert hg.grad_x_syn.is_cuda and max_rel_error(_cpu(hg), ref) <= 1e-9


def _cpu(hg):
    return md.Hypergradient(hg.loss.cpu(), hg.grad_x_syn.cpu(), hg.grad_lrs.cpu(),
                            None if hg.grad_y_syn is None else hg.grad_y_syn.cpu(),
                            {k: t.cpu() for k, t in hg.grad_params.items()}, hg.stats)
