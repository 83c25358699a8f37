"""Checkpointing with recorded segments (the ``taped`` schedule, engine/tape.py): the schedule's
counts, the engine running it against autograd through the whole unroll (float64), the planner
choosing it for ``method="checkpoint"`` on the generic step, and its stored bytes as measured."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import MODELS as PROBLEMS
from conftest import make_problem, rel
from test_generic_batched import many

import memdistill as md
from memdistill.engine import schedules
from memdistill.engine.baseline import autograd_step_bytes, autograd_unroll
from memdistill.engine.dynamics import SGD
from memdistill.engine.hypergradient import plan_sweep
from memdistill.engine.loop import Data, run
from memdistill.engine.planner import Sizes, taped_segment
from memdistill.engine.schedules import Action, Op, simulate
from memdistill.engine.steps.generic import GenericStep
from memdistill.models import convnet, fresh_model, lenet

# ----------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("n", [1, 2, 5, 15, 16, 30, 200, 201])
@pytest.mark.parametrize("segment", [1, 2, 3, 7, 15, 300])
def test_taped_schedule_reverses_every_step_once(n, segment):
    stats = simulate(schedules.taped(n, segment), n)
    assert stats.reverse_order == tuple(range(n, -1, -1))
    last = (n - 1) // segment * segment
    assert stats.max_stored == last // segment                       # the starts before the last segment
    assert stats.max_taped == min(segment, n)
    assert stats.forward_steps == n + last                            # every step once, all but the last segment twice
    assert list(schedules.lazy("taped", n, segment)) == schedules.taped(n, segment)


def test_taped_schedule_in_actions():
    code = {Op.ADVANCE: "A", Op.STORE: "S", Op.RESTORE: "L", Op.FREE: "F", Op.REVERSE: "R", Op.RECORD: "T",
            Op.UNWIND: "U"}
    assert " ".join(f"{code[a.op]}{a.k}" for a in schedules.taped(5, 2)) == (
        "S0 A0 A1 S2 A2 A3 T4 R5 U4 L2 T2 T3 U2 F2 L0 T0 T1 U0 F0")


@pytest.mark.parametrize("actions, message", [
    ([Action(Op.RECORD, 0), Action(Op.ADVANCE, 1)], "the tape holds 1 steps"),
    ([Action(Op.RECORD, 0), Action(Op.REVERSE, 1), Action(Op.UNWIND, 1)], "the tape starts at 0"),
    ([Action(Op.UNWIND, 0)], "it is empty"),
    ([Action(Op.RECORD, 0), Action(Op.UNWIND, 0)], "expected reverse step 1"),
    ([Action(Op.RECORD, 0), Action(Op.REVERSE, 1)], "leaves 1 steps on the tape"),
    ([Action(Op.STORE, 0), Action(Op.RECORD, 0), Action(Op.RESTORE, 0)], "unwind it first"),
])
def test_invalid_tape_actions_are_refused(actions, message):
    with pytest.raises(ValueError, match=message):
        simulate(actions, 1)


def test_taped_segment_argument_is_checked():
    with pytest.raises(ValueError, match="segment must be an integer >= 1"):
        schedules.taped(5, 0)


# ----------------------------------------------------------------------------- the engine


def taped_sweep(step, data: Data, lrs, theta0, momentum: float, segment: int):
    """The engine on the taped schedule, as hypergradient.sweep runs it."""
    xs, ys, s = data.x_syn.unbind(0), data.y_syn.unbind(0), data.x_syn.shape[0]
    dynamics = SGD(lambda theta, k: step.grad(theta, xs[k % s], ys[k % s]), lrs, momentum)
    with step.no_graph():
        return run(schedules.lazy("taped", lrs.shape[0], segment), dynamics, step, data, lrs, theta0)


def problem_sweep(name: str, labels: str, momentum: float, segment: int):
    p = make_problem(name, labels=labels, s=5, epochs=3)    # n = 15: odd, several epochs
    step = GenericStep(p.model)
    data, theta0 = Data(p.x_syn, p.y_syn, p.x_real, p.y_real), step.flatten()
    return taped_sweep(step, data, p.lrs, theta0, momentum, segment), autograd_unroll(step, data, p.lrs, theta0, momentum)


@pytest.mark.parametrize("name, labels", [(m, lab) for m in PROBLEMS for lab in ("int", "soft")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("segment", [1, 2, 4, 15])
def test_taped_equals_autograd_float64(name, labels, momentum, segment):
    got, ref = problem_sweep(name, labels, momentum, segment)
    assert rel(got.loss, ref.loss) <= 1e-9
    for a, b in [(got.grad_theta0, ref.grad_theta0), (got.grad_lrs, ref.grad_lrs), (got.grad_x_syn, ref.grad_x_syn)]:
        assert rel(a, b) <= 1e-9
    assert (got.grad_y_syn is None) == (labels == "int")
    if got.grad_y_syn is not None:
        assert rel(got.grad_y_syn, ref.grad_y_syn) <= 1e-9
    assert ref.grad_x_syn.abs().sum() > 0 and got.forward_steps == simulate(schedules.taped(15, segment), 15).forward_steps


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_taped_one_convnet_row_equals_autograd(norm):
    """One row takes the step's loop (plain autograd on the module itself): training-mode batch
    norm writes its running statistics on every recorded step, which the values never read."""
    model = fresh_model(convnet((2, 4, 4), 3, depth=1, width=4, norm=norm), 0, torch.float64)
    g = torch.Generator().manual_seed(0)
    x_syn, y_syn = torch.randn(3, 4, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (3, 4), generator=g)
    x_real, y_real = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    lrs = torch.full((9,), 0.1, dtype=torch.float64)
    step = GenericStep(model)
    data, theta0 = Data(x_syn, y_syn, x_real, y_real), step.flatten()
    got, ref = taped_sweep(step, data, lrs, theta0, 0.9, 4), autograd_unroll(step, data, lrs, theta0, 0.9)
    for a, b in [(got.grad_theta0, ref.grad_theta0), (got.grad_lrs, ref.grad_lrs), (got.grad_x_syn, ref.grad_x_syn)]:
        assert rel(a, b) <= 1e-9


def test_taped_gives_autograds_bits():
    """The same operations in the same order as autograd through the unroll: the same bits."""
    got, ref = problem_sweep("mlp-binary", "int", 0.9, 4)
    assert torch.equal(got.grad_x_syn, ref.grad_x_syn) and torch.equal(got.grad_lrs, ref.grad_lrs)
    assert torch.equal(got.grad_theta0, ref.grad_theta0) and torch.equal(got.loss, ref.loss)


@pytest.mark.parametrize("model", ["lenet", "layernorm-gelu", "convnet-batch"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_taped_batched_rows_equal_each_model_alone(model, momentum):
    """B = 2 rows through vmap, one batch per model, one rate per model, against each alone."""
    models, x_syn, y_syn, lrs, x_real, y_real = many(model, s=3, epochs=1)
    lrs = torch.cat([lrs, lrs.flip(1)], 1)                  # n = 6 over two epochs
    step = GenericStep(models[0], per_model=True)
    data = Data(x_syn.movedim(0, 1), y_syn.movedim(0, 1), x_real, y_real)
    theta0 = torch.cat([step.flatten(m) for m in models])
    got = taped_sweep(step, data, lrs.T.unsqueeze(-1).contiguous(), theta0, momentum, 4)
    assert step.batched
    for i, m in enumerate(models):
        ref = md.hypergradient(m, x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i], epochs=2, momentum=momentum,
                               method="autograd")
        assert rel(got.loss[i], ref.loss) <= 1e-9
        assert rel(got.grad_x_syn[:, i], ref.grad_x_syn) <= 1e-9
        assert rel(got.grad_lrs[:, i, 0], ref.grad_lrs) <= 1e-9
        assert rel(got.grad_theta0[i], torch.cat([g.reshape(-1) for g in ref.grad_params.values()])) <= 1e-9


# ----------------------------------------------------------------------------- the planner


def mlp_case(n: int, dtype=torch.float64):
    """A 2-6-5-1 MLP on the generic step with n = 8·(n/8) steps."""
    p = make_problem("mlp-binary", s=8, epochs=n // 8, dtype=dtype)
    return p.args(), p.epochs


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_checkpoint_on_the_generic_step_is_taped_and_exact(momentum):
    args, epochs = mlp_case(64)
    hg = md.hypergradient(*args, epochs=epochs, momentum=momentum, method="checkpoint", step="generic")
    ref = md.hypergradient(*args, epochs=epochs, momentum=momentum, method="autograd")
    step = GenericStep(args[0])
    data, theta0 = Data(*args[1:3], *args[4:]), step.flatten()
    graph = autograd_step_bytes(step, data, args[3], theta0, momentum)[1]
    sizes = Sizes(64, 1, theta0.shape[1], 8, momentum)
    segment = taped_segment(sizes, graph)
    assert hg.stats["schedule"] == "taped" and hg.stats["plan"].segment == segment >= 2
    peaks = {L: (64 - 1) // L * sizes.state_bytes + L * graph for L in range(1, 65)}
    assert peaks[segment] == min(peaks.values()) and abs(segment - math.sqrt(64 * sizes.state_bytes / graph)) <= 2
    stats = simulate(schedules.taped(64, segment), 64)
    # what the sweep held at most: the segment starts and one segment's graphs, as predicted
    assert hg.stats["peak_stored_bytes"] == hg.stats["predicted_peak_bytes"] == (
        stats.max_stored * sizes.state_bytes + stats.max_taped * graph)
    assert hg.stats["forward_steps"] == stats.forward_steps
    for a, b in [(hg.grad_x_syn, ref.grad_x_syn), (hg.grad_lrs, ref.grad_lrs)]:
        assert torch.equal(a, b)


def test_taped_checkpoint_grows_as_sqrt_n():
    stored = {}
    for n in (256, 4096):
        args, epochs = mlp_case(n)
        hg = md.hypergradient(*args, epochs=epochs, momentum=0.9, method="checkpoint", step="generic")
        assert hg.stats["schedule"] == "taped"
        stored[n] = hg.stats["peak_stored_bytes"]
    assert 3.5 <= stored[4096] / stored[256] <= 4.5                    # √16 = 4
    ref = md.hypergradient(*mlp_case(256)[0], epochs=32, momentum=0.9, method="autograd")
    assert stored[256] < ref.stats["peak_stored_bytes"] / 4


def test_analytic_steps_and_large_graphs_keep_the_plain_schedule():
    args, epochs = mlp_case(64)
    assert md.plan(*args, epochs=epochs, method="checkpoint", step="fused").schedule == "periodic"
    assert md.plan(*args, epochs=epochs, method="checkpoint", snapshots=4, step="generic").schedule == "binomial"
    assert md.plan(*args, epochs=epochs, method="checkpoint", step="generic", offload="cpu").schedule == "periodic"
    step = GenericStep(args[0], compile=True)
    data = Data(*args[1:3], *args[4:])
    assert plan_sweep(step, data, args[3], step.flatten(), method="checkpoint").schedule == "periodic"
    # a short unroll: the least taped peak has segments of 1 step
    p = make_problem("mlp-binary", s=3, epochs=1)
    assert md.plan(*p.args(), epochs=1, method="checkpoint", step="generic").schedule == "periodic"
    # a wide net's graph holds many states: recording would store over TAPED_MEMORY times as much
    wide = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).double()
    x_syn, y_syn = torch.randn(8, 64, 2, dtype=torch.float64), torch.randint(0, 2, (8, 64))
    lrs = torch.full((1024,), 0.1, dtype=torch.float64)
    plan = md.plan(wide, x_syn, y_syn, lrs, x_syn[0], y_syn[0], epochs=128, method="checkpoint", step="generic")
    step = GenericStep(wide)
    graph = autograd_step_bytes(step, Data(x_syn, y_syn, x_syn[0], y_syn[0]), lrs, step.flatten(), 0.0)[1]
    sizes = Sizes(1024, 1, step.flatten().shape[1], 8, 0.0)
    assert taped_segment(sizes, graph) >= 2 and graph > 9 * sizes.state_bytes and plan.schedule == "periodic"
    # a budget the taped peak exceeds but the plain schedule's fits
    taped = md.plan(*args, epochs=epochs, method="checkpoint", step="generic")
    plain = md.plan(*args, epochs=epochs, method="checkpoint", step="fused")
    budget = (taped.predicted_peak_bytes + plain.predicted_peak_bytes) // 2
    assert md.plan(*args, epochs=epochs, method="checkpoint", step="generic", memory=budget).schedule == "periodic"


def test_taped_lenet_images_through_the_distiller():
    """A LeNet distillation step on checkpoint (taped) gives autograd's numbers."""
    X = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    runs = {}
    for method in ("checkpoint", "autograd"):
        d = md.Distiller([lenet((1, 8, 8), 4)], steps=4, epochs=5, per_class=1, method=method, seed=0,
                         progress=False, dtype=torch.float64)
        runs[method] = (d, d.fit(X, y, outer_steps=2, batch_size=16))
    assert [p.schedule for p in runs["checkpoint"][0].plans] == ["taped"]
    (_, got), (_, ref) = runs["checkpoint"], runs["autograd"]
    assert rel(got.x, ref.x) <= 1e-9 and rel(got.lrs, ref.lrs) <= 1e-9
    assert len(got.history) == 2 and got.history == pytest.approx(ref.history, rel=1e-12)


def test_taped_gradcheck():
    """Finite differences of the outer loss agree with the taped hypergradient (x̃ and η̃)."""
    p = make_problem("mlp-binary", s=8, b=2, epochs=4)          # n = 32
    assert md.plan(*p.args(), epochs=4, method="checkpoint", step="generic").schedule == "taped"

    def outer(x_syn, lrs):
        return md.unrolled_loss(p.model, x_syn, p.y_syn, lrs, p.x_real, p.y_real, epochs=4, momentum=0.5,
                                method="checkpoint", step="generic")
    assert torch.autograd.gradcheck(outer, (p.x_syn.clone().requires_grad_(), p.lrs.clone().requires_grad_()))


def test_auto_takes_the_taped_schedule_between_replay_and_binomial():
    args, epochs = mlp_case(64)
    taped = md.plan(*args, epochs=epochs, method="checkpoint", step="generic")
    replay = md.plan(*args, epochs=epochs, method="replay", step="generic")
    assert taped.schedule == "taped" and taped.predicted_peak_bytes < replay.predicted_peak_bytes
    budget = (taped.predicted_peak_bytes + replay.predicted_peak_bytes) // 2
    plan = md.plan(*args, epochs=epochs, method="auto", step="generic", memory=budget)
    assert (plan.method, plan.schedule, plan.segment) == ("checkpoint", "taped", taped.segment)
    assert "recorded segment" in plan.why
    hg = md.hypergradient(*args, epochs=epochs, method="auto", step="generic", memory=budget)
    assert hg.stats["schedule"] == "taped" and hg.stats["peak_stored_bytes"] == taped.predicted_peak_bytes <= budget
    # under the taped peak: binomial checkpointing; an analytic step never records
    assert md.plan(*args, epochs=epochs, method="auto", step="generic",
                   memory=taped.predicted_peak_bytes - 1).schedule == "binomial"
    assert md.plan(*args, epochs=epochs, method="auto", step="fused", memory=budget).schedule == "binomial"
