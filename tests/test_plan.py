"""Memory as a budget: memory= strings, md.plan / method="auto" choices, predicted == measured
stored bytes, the snapshot pool's slots, exactness of every choice, and the CLI / job-file key."""
from __future__ import annotations

import pytest
import torch
from conftest import make_problem, rel

import memdistill as md
from memdistill.engine import loop, schedules
from memdistill.engine.fixedpoint import stack_bytes
from memdistill.engine.planner import parse_memory

# ---- memory= ----

GOOD = [(1, 1), (4096, 4096), ("4096", 4096), ("64B", 64), ("512MiB", 512 * 2 ** 20), ("2GiB", 2 * 2 ** 30),
        ("1.5 GiB", 3 * 2 ** 29), ("64MB", 64 * 10 ** 6), ("3KB", 3000), ("3KiB", 3072), (" 1TiB ", 2 ** 40)]
BAD = ["", "lots", "2 bananas", "64mb", "64 M", "-1MiB", "0", 0, -5, 1.5, True, "1e3MiB", "0.1B", None]


@pytest.mark.parametrize("text, expected", GOOD)
def test_memory_strings(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", BAD[:-1])
def test_bad_memory_names_the_argument_and_the_forms(text):
    with pytest.raises(ValueError, match=r"^hypergradient: memory must be .*'512MiB', '2GiB' or '64MB'.*KiB/MiB"):
        parse_memory(text)
    assert parse_memory(None) is None


def test_hypergradient_rejects_a_bad_memory_before_any_work():
    p = make_problem(s=2, epochs=1)
    with pytest.raises(ValueError, match="^hypergradient: memory must be"):
        md.hypergradient(*p.args(), memory="plenty")
    with pytest.raises(ValueError, match="^hypergradient: snapshots goes with method='checkpoint'"):
        md.hypergradient(*p.args(), method="auto", snapshots=3)


# ---- choices: Linear(2, 1) in float64 on the fused step, P = 3: one state is 24 bytes, 48 with momentum ----


def linear(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()
    x_syn, y_syn = torch.randn(8, 4, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (8, 4), generator=g)
    x, y = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (16,), generator=g)
    return (model, x_syn, y_syn, torch.full((n,), 0.01, dtype=torch.float64), x, y), n // 8


# memory, momentum -> method, snapshots, predicted bytes (n = 256)
CHOICES = [
    (1 << 20, 0.9, "replay", None, 256 * 48),           # every state fits
    (256 * 48, 0.9, "replay", None, 256 * 48),          # exactly
    (256 * 48 - 1, 0.9, "checkpoint", 255, 255 * 48),   # one byte short: the most snapshots that fit
    (480, 0.9, "checkpoint", 10, 480),
    (144, 0.9, "checkpoint", 3, 144),                   # 1,569 forward steps: cheaper than reversible
    (100, 0.9, "reversible", None, stack_bytes(256, 3, 0.9)),  # 2 snapshots would recompute 3,630 steps
    (100, 0.0, "checkpoint", 4, 96),                    # no momentum: no reversible
]


@pytest.mark.parametrize("memory, momentum, method, snapshots, predicted", CHOICES)
def test_auto_chooses_the_fastest_plan_that_fits(memory, momentum, method, snapshots, predicted):
    args, epochs = linear(256)
    plan = md.plan(*args, epochs=epochs, momentum=momentum, memory=memory)
    assert (plan.method, plan.snapshots, plan.predicted_peak_bytes, plan.memory) == (method, snapshots, predicted, memory)
    assert plan.predicted_peak_bytes <= memory and plan.steps == 256 and plan.why
    hg = md.hypergradient(*args, epochs=epochs, momentum=momentum, method="auto", memory=memory)
    assert hg.stats["plan"] == plan and hg.stats["method"] == method and hg.stats["snapshots"] == snapshots
    assert hg.stats["peak_stored_bytes"] == hg.stats["predicted_peak_bytes"] == predicted  # measured = planned
    assert hg.stats["forward_steps"] == plan.forward_steps and hg.stats["memory"] == memory


def test_nothing_fits_names_the_smallest_budget():
    args, epochs = linear(256)
    with pytest.raises(ValueError, match=r"^hypergradient: memory=.* is too small for n=256: the smallest plan "
                       r"needs 0.0 MiB \(48 bytes\) \(one checkpoint snapshot\).*pass memory >= 48$"):
        md.plan(*args, epochs=epochs, momentum=0.9, memory=47)
    with pytest.raises(ValueError, match=r"pass memory >= 24$"):
        md.hypergradient(*args, epochs=epochs, method="auto", memory="23B")
    assert md.plan(*args, epochs=epochs, momentum=0.9, memory=48).snapshots == 1


def test_an_explicit_method_over_its_budget_is_refused_before_any_work():
    args, epochs = linear(256)
    with pytest.raises(ValueError, match=r"^hypergradient: method='replay' stores 0.0 MiB \(12,288 bytes\) for "
                       r"n=256, over memory=.*\(12,287 bytes\); raise memory or pass method='auto'"):
        md.hypergradient(*args, epochs=epochs, momentum=0.9, method="replay", memory=12287)
    plan = md.plan(*args, epochs=epochs, momentum=0.9, method="checkpoint", snapshots=5, memory="1KiB")
    assert (plan.method, plan.schedule, plan.snapshots, plan.predicted_peak_bytes) == ("checkpoint", "binomial", 5, 240)


def test_auto_without_memory_takes_the_fastest_in_half_the_free_memory():
    args, epochs = linear(64)
    plan = md.plan(*args, epochs=epochs, momentum=0.9)
    assert plan.method == "replay" and plan.memory > 0       # the analytic step: replay beats autograd
    p = make_problem("conv-3class", s=3, epochs=2)            # the generic step: autograd first
    assert md.plan(*p.args(), epochs=2).method == "autograd"


# ---- predicted == measured ----

METHODS = [("replay", None), ("checkpoint", None), ("checkpoint", 1), ("checkpoint", 4), ("reversible", None)]


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("method, snapshots", METHODS)
def test_predicted_equals_measured_stored_bytes(method, snapshots, momentum):
    if method == "reversible" and momentum == 0:
        return
    args, epochs = linear(200)
    plan = md.plan(*args, epochs=epochs, momentum=momentum, method=method, snapshots=snapshots)
    hg = md.hypergradient(*args, epochs=epochs, momentum=momentum, method=method, snapshots=snapshots)
    assert hg.stats["peak_stored_bytes"] == plan.predicted_peak_bytes > 0
    assert hg.stats["forward_steps"] == plan.forward_steps


def test_autograd_prediction_is_measured_on_the_real_shapes():
    for model in ("conv-3class", "mlp-binary"):
        p = make_problem(model, s=5, epochs=3)
        hg = md.hypergradient(*p.args(), epochs=3, momentum=0.9, method="autograd")
        assert abs(hg.stats["predicted_peak_bytes"] - hg.stats["peak_stored_bytes"]) <= 0.02 * hg.stats["peak_stored_bytes"]


# ---- the pool ----


def test_pool_has_the_schedules_most_stored_slots_allocated_once(monkeypatch):
    pools = []

    class Spy(loop.Pool):
        def __init__(self, template, slots):
            super().__init__(template, slots)
            pools.append(self)
            self.first = [None if b is None else b.data_ptr() for b in self.buffers]

    monkeypatch.setattr(loop, "Pool", Spy)
    args, epochs = linear(96)
    for method, snapshots in METHODS:
        hg = md.hypergradient(*args, epochs=epochs, momentum=0.9, method=method, snapshots=snapshots)
        pool = pools[-1]
        _, actions = md.engine.planner.schedule_of(method, 96, snapshots)
        assert pool.slots == schedules.simulate(actions, 96).max_stored == schedules.max_stored(actions)
        assert [None if b is None else b.data_ptr() for b in pool.buffers] == pool.first
        assert not pool.where and sorted(pool.free_slots) == list(range(pool.slots))   # all returned
        if method != "reversible":
            assert hg.stats["peak_stored_bytes"] == pool.slots * pool.slot_bytes == pool.slots * 48


# ---- every choice auto can make is exact ----

AUTO = {"autograd": None, "replay": 10 ** 9, "checkpoint": None, "reversible": None}


@pytest.mark.parametrize("model", ["conv-3class", "mlp-binary"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_choice_of_auto_is_exact_against_autograd(model, momentum):
    p = make_problem(model, s=5, epochs=8)   # n = 40
    kw = dict(epochs=8, momentum=momentum)
    ref = md.hypergradient(*p.args(), method="autograd", **kw)
    state = md.plan(*p.args(), method="replay", **kw).predicted_peak_bytes // 40
    budgets = [10 ** 9, 40 * state, 5 * state, 2 * state]
    if momentum:   # 1.25 states: one snapshot would recompute 820 steps, reversible 2 x 40 at 6 each
        budgets.append(md.plan(*p.args(), method="reversible", **kw).predicted_peak_bytes)
    seen = {}
    for memory in budgets:
        hg = md.hypergradient(*p.args(), method="auto", memory=memory, **kw)
        assert hg.stats["peak_stored_bytes"] <= memory or hg.stats["method"] == "autograd"
        seen[hg.stats["method"], hg.stats["snapshots"]] = hg
        for got, want in [(hg.loss, ref.loss), (hg.grad_x_syn, ref.grad_x_syn), (hg.grad_lrs, ref.grad_lrs)]:
            assert rel(got, want) <= 1e-9
        for name in ref.grad_params:
            assert rel(hg.grad_params[name], ref.grad_params[name]) <= 1e-9
    expected = {("replay", None), ("checkpoint", 5), ("checkpoint", 2)} | ({("autograd", None)} if model == "conv-3class"
                                                                         else set())
    expected |= {("reversible", None)} if momentum else set()
    assert set(seen) == expected


def test_auto_under_a_tight_budget_equals_replay_bit_for_bit():
    args, epochs = linear(256)
    replay = md.hypergradient(*args, epochs=epochs, momentum=0.9, method="replay")
    tight = md.hypergradient(*args, epochs=epochs, momentum=0.9, method="auto", memory="480B")
    assert tight.stats["method"] == "checkpoint" and tight.stats["peak_stored_bytes"] <= 480
    assert torch.equal(tight.grad_x_syn, replay.grad_x_syn) and torch.equal(tight.grad_lrs, replay.grad_lrs)
    assert torch.equal(tight.loss, replay.loss)


def test_unrolled_loss_takes_memory():
    (model, x_syn, y_syn, lrs, x, y), epochs = linear(64)
    x_syn.requires_grad_()
    md.unrolled_loss(model, x_syn, y_syn, lrs, x, y, epochs=epochs, momentum=0.9, method="auto",
                     memory=480).backward()
    hg = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=epochs, momentum=0.9, method="checkpoint",
                          snapshots=10)
    assert torch.equal(x_syn.grad, hg.grad_x_syn)


# ---- Distiller, CLI, job files ----


def test_distiller_passes_memory_to_every_sweep():
    data = md.load_dataset("moons")
    d = md.Distiller([md.mlp("1-layer")] * 2, steps=4, epochs=2, method="auto", memory="1KiB", progress=False,
                     dtype=torch.float64)
    out = d.fit(data.x_train, data.y_train, outer_steps=2, batch_size=64)
    assert out.config["memory"] == 1024 and out.config["method"] == "auto"
    with pytest.raises(ValueError, match="^Distiller: memory must be"):
        md.Distiller([md.mlp("1-layer")], memory="a lot")


def test_cli_memory_and_profile_plan(tmp_path, capsys):
    from memdistill.apps.cli import main

    assert main(["profile", "--plan", "--n", "40,400", "--methods", "auto,replay", "--width", "8", "--depth", "1",
                 "--memory", "64KiB"]) == 0
    out = capsys.readouterr().out
    assert "| auto | 40 | replay/store-all | 0.01007 | 40 |" in out          # 40 states of 2 x 33 float32
    assert "| auto | 400 | checkpoint/binomial(248) | 0.06244 | 552 |" in out    # 248 of 64 KiB's 248.2
    assert "| replay | 400 | method='replay' stores 0.1 MiB (105,600 bytes) for n=400, over memory" in out
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--memory", "2 GB please", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--memory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--n", "4"])
    assert exit_.value.code == 2 and "--out is required" in capsys.readouterr().err


def test_job_file_memory_key(tmp_path):
    from memdistill.apps import jobfile

    job = jobfile.parse('[[jobs]]\nmethod = "auto"\nmemory = "64MiB"\n', tmp_path / "job.toml")
    assert job.configs[0].memory == "64MiB" and job.configs[0].method == "auto"
    assert jobfile.parse("[[jobs]]\nmemory = 4096\n", tmp_path / "job.toml").configs[0].memory == 4096
    with pytest.raises(ValueError, match=r"jobs\[0\]\.memory: memory must be a positive number of bytes"):
        jobfile.parse('[[jobs]]\nmemory = "lots"\n', tmp_path / "job.toml")


def test_profile_offload_plans_and_measures_each_level(tmp_path, capsys):
    """--offload: --plan shows each level's bytes as md.plan predicts them; a measured row runs with
    the offloaded plan (its CSV says where) and stores in memory what that plan predicted."""
    import csv

    from memdistill.apps import profiling
    from memdistill.apps.cli import main

    assert main(["profile", "--plan", "--n", "400", "--methods", "autograd,checkpoint", "--width", "8",
                 "--depth", "1", "--offload", "disk"]) == 0
    out = capsys.readouterr().out
    problem = profiling.make_problem(None, width=8, depth=1)
    planned = md.plan(*problem.build(40, 10), epochs=10, momentum=0.9, method="checkpoint", offload="disk")
    memory, disk = (nbytes / profiling.MiB for _, nbytes in planned.levels)
    assert f"| checkpoint | 400 | checkpoint/two-level({planned.snapshots}) |" in out
    assert f"| memory {memory:.4g}, disk {disk:.4g} |" in out and disk > 0
    assert "| autograd | 400 | autograd/autograd |" in out           # no snapshots: planned without offload
    assert main(["profile", "--n", "40", "--methods", "checkpoint", "--width", "8", "--depth", "1",
                 "--offload", "disk", "--out", str(tmp_path)]) == 0
    (row,) = csv.DictReader((tmp_path / "profile.csv").open())
    assert row["offload"] == "disk" and row["plan"].startswith("checkpoint/two-level")
    assert row["peak_stored_bytes"] == row["predicted_peak_bytes"]
