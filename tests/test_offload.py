"""Offload (issue 13 part 3): snapshots on a second storage level, host memory or a memory-mapped
file, named by the schedule's actions. Same bits as without offload, files gone afterwards, a full
disk or an unwritable directory an error and never a wrong result."""
from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest
import torch
from conftest import make_problem, max_rel_error

import memdistill as md
from memdistill.engine import loop, pool, schedules
from memdistill.engine.dynamics import SGD
from memdistill.engine.hypergradient import make_step
from memdistill.engine.planner import Plan, Sizes, choose, predict
from memdistill.engine.pool import storage_levels

Op, Action = schedules.Op, schedules.Action


def grads(hg: md.Hypergradient) -> list[torch.Tensor]:
    out = [hg.loss, hg.grad_x_syn, hg.grad_lrs, *hg.grad_params.values()]
    return out + ([] if hg.grad_y_syn is None else [hg.grad_y_syn])


def same_bits(a: md.Hypergradient, b: md.Hypergradient) -> bool:
    return all(torch.equal(x, y) for x, y in zip(grads(a), grads(b), strict=True))


# ---- the two-level schedule: counts against a brute-force simulation ----

@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 31, 100])
@pytest.mark.parametrize("c", [0, 1, 2, 3, 5, 9, 40])
def test_two_level_counts_match_simulation(n, c):
    stats = schedules.simulate(schedules.two_level(n, c), n)   # raises on an invalid schedule
    assert stats.forward_steps == schedules.two_level_cost(n, c)
    assert (stats.level_max_stored + (0, 0))[:2] == schedules.two_level_slots(n, c)
    assert stats.level_max_stored[0] <= c
    assert schedules.two_level_slots(n, c)[1] <= -(-(n + 1) // (c + 1))   # ⌈(n+1)/(c+1)⌉ segment starts


def test_two_level_costs_about_two_n_forward_steps():
    for n, c in [(1000, 31), (4096, 63), (10 ** 4, 100)]:
        assert n <= schedules.two_level_cost(n, c) < 2 * n


def test_two_level_with_no_memory_slot_is_store_all_on_disk():
    assert list(schedules.two_level(9, 0)) == schedules.relevel(schedules.store_all(9), 1)


def test_two_level_is_generated_lazily_and_alike_each_time():
    lazy = schedules.two_level(50, 4)
    assert not isinstance(lazy, list) and list(lazy) == list(lazy)


def test_simulate_checks_the_level_of_restore_and_free():
    acts = [Action(Op.STORE, 0, 1), Action(Op.ADVANCE, 0), Action(Op.REVERSE, 1), Action(Op.RESTORE, 0, 0)]
    with pytest.raises(ValueError, match="no state is stored there \\(it is on level 1\\)"):
        schedules.simulate(acts, 1)


def test_relevel_moves_only_storage_actions():
    acts = schedules.relevel(schedules.binomial(12, 3), 1)
    assert {a.level for a in acts if a.op in (Op.STORE, Op.RESTORE, Op.FREE)} == {1}
    assert {a.level for a in acts if a.op in (Op.ADVANCE, Op.REVERSE)} == {0}
    assert schedules.simulate(acts, 12).level_max_stored == (0, 3)


# ---- same bits as without offload, and exact ----

CASES = [("replay", None), ("checkpoint", None), ("checkpoint", 3)]


@pytest.mark.parametrize("model,labels", [("mlp-binary", "int"), ("conv-3class", "soft")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_offload_gives_the_bits_of_no_offload_and_is_exact(model, labels, momentum):
    p = make_problem(model, labels=labels, epochs=4)
    ref = md.hypergradient(*p.args(), epochs=p.epochs, momentum=momentum, method="autograd")
    for method, snapshots in CASES:
        plain = md.hypergradient(*p.args(), epochs=p.epochs, momentum=momentum, method=method, snapshots=snapshots)
        for offload in ("cpu", "disk"):
            hg = md.hypergradient(*p.args(), epochs=p.epochs, momentum=momentum, method=method,
                                  snapshots=snapshots, offload=offload)
            assert same_bits(hg, plain), (method, snapshots, offload)
            assert max_rel_error(hg, ref) <= 1e-9
            assert hg.stats["offload"] == offload


@pytest.mark.parametrize("c", [0, 1, 4])
def test_two_level_on_disk_equals_the_same_schedule_in_memory(c):
    """The engine with the two-level schedule on level 0 only, against levels 0 + disk."""
    p = make_problem("mlp-binary", epochs=5)
    step = make_step(p.model, None)
    data = loop.Data(p.x_syn, p.y_syn, p.x_real, p.y_real)
    theta0 = step.flatten()

    def gradient(theta, k):
        return step.value_and_grad(theta, p.x_syn[k % 5], p.y_syn[k % 5])[1]

    n = p.lrs.shape[0]
    with torch.no_grad():
        memory = loop.run(schedules.relevel(list(schedules.two_level(n, c)), 0), SGD(gradient, p.lrs, 0.9),
                          step, data, p.lrs, theta0)
        plan = Plan("checkpoint", c, "two-level", 0, 0, n, None, "", "disk", (("memory", 0), ("disk", 1)))
        with storage_levels(plan) as levels:
            disk = loop.run(schedules.two_level(n, c), SGD(gradient, p.lrs, 0.9), step, data, p.lrs, theta0, levels)
    for a, b in zip(memory[:4], disk[:4]):
        assert torch.equal(a, b)
    assert memory.forward_steps == disk.forward_steps == schedules.two_level_cost(n, c)


def test_host_pool_on_the_device(device):
    """HostPool round trip on each device (CUDA: pinned buffers, side stream, events)."""
    State = namedtuple("State", "theta v")
    template = State(torch.zeros(2, 5, device=device, dtype=torch.float64), None)
    host = pool.HostPool(template, 2)
    assert all(b is None or b.device.type == "cpu" for b in host.buffers)
    states = [State(torch.full((2, 5), float(k), device=device, dtype=torch.float64), None) for k in range(3)]
    host.store(0, states[0])
    host.store(1, states[1])
    host.free(0)
    host.store(2, states[2])   # reuses slot 0 after its copy
    for k in (1, 2):
        back = host.restore(k)
        assert back.theta.device == template.theta.device and torch.equal(back.theta, states[k].theta)
    host.close()


def test_hypergradient_offload_on_each_device(device):
    p = make_problem("mlp-binary", epochs=4)
    args = [a.to(device) for a in p.args()[1:]]
    model = p.model.to(device)
    plain = md.hypergradient(model, *args, epochs=p.epochs, momentum=0.9, method="checkpoint", snapshots=3)
    for offload in ("cpu", "disk"):
        hg = md.hypergradient(model, *args, epochs=p.epochs, momentum=0.9, method="checkpoint", snapshots=3,
                              offload=offload)
        assert same_bits(hg, plain)


# ---- plans: levels and bytes; the budget bounds the memory level ----

def test_plan_names_levels_and_predicts_the_measured_bytes():
    p = make_problem("mlp-binary", epochs=6)
    for offload, names in [(None, ("memory",)), ("cpu", ("device", "host")), ("disk", ("memory", "disk"))]:
        for method, snapshots in CASES:
            plan = md.plan(*p.args(), epochs=p.epochs, momentum=0.9, method=method, snapshots=snapshots,
                           offload=offload)
            hg = md.hypergradient(*p.args(), epochs=p.epochs, momentum=0.9, method=method, snapshots=snapshots,
                                  offload=offload)
            assert tuple(name for name, _ in plan.levels) == names
            assert hg.stats["levels"] == dict(plan.levels)
            assert hg.stats["peak_stored_bytes"] == plan.predicted_peak_bytes
            assert hg.stats["forward_steps"] == plan.forward_steps


def test_auto_with_disk_keeps_the_budget_for_memory_and_puts_the_rest_on_disk():
    sizes = Sizes(n=1000, rows=1, params=100, itemsize=8, momentum=0.9)   # S = 1,600 bytes
    everything = choose(sizes, 1000 * 1600, None, "disk")
    assert (everything.method, everything.offload) == ("replay", None)
    tight = choose(sizes, 20 * 1600 + 5, None, "disk")
    assert (tight.method, tight.snapshots, tight.schedule, tight.offload) == ("checkpoint", 20, "two-level", "disk")
    assert tight.predicted_peak_bytes <= 20 * 1600
    assert dict(tight.levels)["disk"] == schedules.two_level_slots(1000, 20)[1] * 1600
    nothing = choose(sizes, 100, None, "disk")   # under one state: all on disk, not an error
    assert (nothing.method, nothing.predicted_peak_bytes, nothing.forward_steps) == ("replay", 0, 1000)


def test_auto_with_disk_runs_in_a_tight_budget_with_replays_bits():
    p = make_problem("mlp-binary", epochs=6)
    replay = md.hypergradient(*p.args(), epochs=p.epochs, momentum=0.9, method="replay")
    state = 2 * 29 * 8   # (θ, v) of the 2-6-5-1 MLP, float64
    hg = md.hypergradient(*p.args(), epochs=p.epochs, momentum=0.9, method="auto", memory=3 * state, offload="disk")
    assert hg.stats["plan"].schedule == "two-level" and hg.stats["peak_stored_bytes"] <= 3 * state
    assert same_bits(hg, replay)


def test_auto_with_cpu_budgets_the_host_and_never_picks_autograd():
    sizes = Sizes(n=100, rows=1, params=10, itemsize=8, momentum=0.0)
    plan = choose(sizes, 10 ** 9, lambda n: 1, "cpu")
    assert (plan.method, plan.offload, plan.levels) == ("replay", "cpu", (("device", 0), ("host", 8000)))


def test_unrolled_loss_takes_offload(tmp_path):
    p = make_problem("mlp-binary", epochs=3)
    x_syn, lrs = p.x_syn.clone().requires_grad_(), p.lrs.clone().requires_grad_()
    md.unrolled_loss(p.model, x_syn, p.y_syn, lrs, p.x_real, p.y_real, epochs=3, offload="disk",
                     offload_dir=str(tmp_path)).backward()
    hg = md.hypergradient(*p.args(), epochs=3)
    assert torch.equal(x_syn.grad, hg.grad_x_syn) and torch.equal(lrs.grad, hg.grad_lrs)
    assert os.listdir(tmp_path) == []


# ---- files: removed on success and failure; full or unwritable disks are errors ----

def test_files_live_in_offload_dir_during_the_sweep_and_are_removed_after(tmp_path, monkeypatch):
    seen = []
    real = pool.FilePool.restore

    def spy(self, k):
        seen.append(sorted(os.listdir(self.directory)))
        return real(self, k)

    monkeypatch.setattr(pool.FilePool, "restore", spy)
    p = make_problem("mlp-binary", epochs=4)
    md.hypergradient(*p.args(), epochs=p.epochs, momentum=0.9, snapshots=2, offload="disk", offload_dir=tmp_path)
    assert seen and seen[0] == ["snapshots-0.bin", "snapshots-1.bin"]   # θ and v
    assert os.listdir(tmp_path) == []


def test_files_are_removed_when_the_sweep_fails(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        assert len(os.listdir(tmp_path)) == 1 and os.listdir(os.path.join(tmp_path, os.listdir(tmp_path)[0]))
        raise RuntimeError("failed mid-sweep")

    monkeypatch.setattr(loop, "reverse_step", boom)
    p = make_problem("mlp-binary", epochs=4)
    with pytest.raises(RuntimeError, match="failed mid-sweep"):
        md.hypergradient(*p.args(), epochs=p.epochs, snapshots=2, offload="disk", offload_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_too_little_free_space_is_an_error_before_any_work(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100))
    monkeypatch.setattr(loop, "reverse_step", lambda *a, **k: pytest.fail("work started"))
    p = make_problem("mlp-binary", epochs=4)
    with pytest.raises(OSError, match="offload='disk' needs .* only 0.0 MiB \\(100 bytes\\) is free") as info:
        md.hypergradient(*p.args(), epochs=p.epochs, method="replay", offload="disk", offload_dir=tmp_path)
    assert info.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []


def test_a_full_disk_while_reserving_is_a_clear_oserror_and_leaves_no_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    p = make_problem("mlp-binary", epochs=4)
    with pytest.raises(OSError, match="cannot reserve .* bytes for 20 snapshots .*: the disk is full"):
        md.hypergradient(*p.args(), epochs=p.epochs, method="replay", offload="disk", offload_dir=tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["/sys", "readonly"])
def test_an_unwritable_directory_is_an_error_before_any_work(tmp_path, where, monkeypatch):
    if where == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories (/sys covers the case)")
        where = tmp_path / "ro"
        where.mkdir()
        where.chmod(0o555)
    monkeypatch.setattr(loop, "reverse_step", lambda *a, **k: pytest.fail("work started"))
    p = make_problem("mlp-binary", epochs=4)
    with pytest.raises(OSError, match=f"offload_dir='{where}' is not writable"):
        md.hypergradient(*p.args(), epochs=p.epochs, offload="disk", offload_dir=str(where))


# ---- bad arguments ----

@pytest.mark.parametrize("kwargs,kind,match", [
    ({"offload": "gpu"}, ValueError, "offload must be one of \\[None, 'cpu', 'disk'\\], got 'gpu'"),
    ({"offload": "cpu", "method": "autograd"}, ValueError, "method='autograd' has none of"),
    ({"offload": "disk", "method": "reversible", "momentum": 0.9}, ValueError, "method='reversible' has none of"),
    ({"offload_dir": "/tmp"}, ValueError, "offload_dir goes with offload='disk'"),
    ({"offload": "disk", "offload_dir": 3}, TypeError, "offload_dir must be a path"),
    ({"offload": "disk", "offload_dir": "/no/such/dir"}, ValueError, "offload_dir must be an existing directory"),
])
def test_bad_offload_arguments_name_the_argument(kwargs, kind, match):
    p = make_problem("mlp-binary", epochs=2)
    with pytest.raises(kind, match=match):
        md.hypergradient(*p.args(), epochs=p.epochs, **kwargs)


def test_predict_of_disk_needs_no_schedule_for_a_million_steps():
    sizes = Sizes(n=10 ** 6, rows=1, params=261, itemsize=8, momentum=0.9)
    plan = predict("checkpoint", sizes, None, lambda n: 0, offload="disk")
    assert plan.snapshots == 1000 and plan.forward_steps == schedules.two_level_cost(10 ** 6, 1000) < 2 * 10 ** 6
    assert dict(plan.levels) == {"memory": 999 * 261 * 16, "disk": 1000 * 261 * 16}


# ---- Distiller, CLI, job files ----

def count_file_pools(monkeypatch) -> list:
    made = []
    real = pool.FilePool.__init__

    def spy(self, *args, **kwargs):
        made.append(kwargs.get("directory"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(pool.FilePool, "__init__", spy)
    return made


def test_distiller_offloads_every_sweep_with_the_same_results(tmp_path, monkeypatch):
    data = md.load_dataset("moons")

    def fit(**offload):
        d = md.Distiller([md.mlp("1-layer")] * 2, steps=4, epochs=2, progress=False, dtype=torch.float64, **offload)
        return d.fit(data.x_train, data.y_train, outer_steps=2, batch_size=64)

    plain = fit()
    made = count_file_pools(monkeypatch)
    disk = fit(offload="disk", offload_dir=str(tmp_path))
    assert len(made) == 2 and all(str(d).startswith(str(tmp_path)) for d in made)   # one sweep per outer step
    assert torch.equal(disk.x, plain.x) and torch.equal(disk.lrs, plain.lrs) and disk.history == plain.history
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="^Distiller: offload must be one of"):
        md.Distiller([md.mlp("1-layer")], offload="tape")
    with pytest.raises(ValueError, match="^Distiller: offload_dir goes with offload='disk'"):
        md.Distiller([md.mlp("1-layer")], offload_dir=str(tmp_path))


TINY = ["--steps", "2", "--epochs", "1", "--outer-epochs", "1", "--batch-size", "500", "--no-progress"]


def test_cli_offload_options(tmp_path, capsys, monkeypatch):
    from memdistill.apps.cli import main

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    made = count_file_pools(monkeypatch)
    main(["distill", "--offload", "disk", "--offload-dir", str(scratch), *TINY, "--out", str(tmp_path / "out")])
    assert made and os.listdir(scratch) == []
    for argv, message in [(["--offload-dir", str(scratch)], "--offload-dir goes with --offload disk"),
                          (["--offload", "disk", "--offload-dir", str(tmp_path / "none")], "--offload-dir: no folder"),
                          (["--offload", "cpu", "--method", "autograd"], "--method autograd has none of"),
                          (["--offload", "tape"], "--offload")]:
        with pytest.raises(SystemExit) as exit_:
            main(["distill", *argv, *TINY, "--out", str(tmp_path / "bad")])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_job_file_offload_keys(tmp_path):
    from memdistill.apps import jobfile

    (tmp_path / "spill").mkdir()
    job = jobfile.parse('[[jobs]]\noffload = "disk"\noffload_dir = "spill"\n', tmp_path / "job.toml")
    assert job.configs[0].offload == "disk" and job.configs[0].offload_dir == str((tmp_path / "spill").resolve())
    assert jobfile.parse('[[jobs]]\noffload = "cpu"\n', tmp_path / "job.toml").configs[0].offload == "cpu"
    for text, message in [('offload = "tape"', r"jobs\[0\]\.offload"),
                          ('offload_dir = "spill"', "offload_dir: goes with offload"),
                          ('offload = "disk"\noffload_dir = "none"', "offload_dir: no folder at"),
                          ('offload = "cpu"\nmethod = "autograd"', "offload: method 'autograd' stores no snapshots")]:
        with pytest.raises(ValueError, match=message):
            jobfile.parse(f"[[jobs]]\n{text}\n", tmp_path / "job.toml")
