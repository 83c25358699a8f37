"""Job files of memdistill batch: their schema (pydantic models, the README table made from
them), the jobs and runs they expand into, and every problem of a bad file reported at once."""

import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from memdistill.apps import jobfile
from memdistill.apps.batch import runs
from memdistill.apps.reproduce import Protocol

README = Path(__file__).resolve().parents[1] / "README.md"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(text: str, folder: Path) -> list[str]:
    """The lines of the error a job file with ``text`` in ``folder`` raises."""
    with pytest.raises(ValueError) as error:
        jobfile.parse(text, folder / "job.toml")
    return str(error.value).splitlines()


# ---- every problem named by its key path ----

BAD_FILES = [
    ("jobz = 1\n[[jobs]]\n", "jobz: unknown key (did you mean 'jobs'?)"),
    ("[defaults]\nsteps = 2\n", "jobs: expected a non-empty list of [[jobs]] tables"),
    ("jobs = [1]\n", "jobs[0]: expected a table, got 1"),
    (
        '[[jobs]]\nmethod = "adjiont"\n',
        "jobs[0].method: expected one of 'autograd', 'replay', 'checkpoint', 'reversible' or 'auto', got 'adjiont'",
    ),
    ("[[jobs]]\nstesp = 3\n", "jobs[0].stesp: unknown key (did you mean 'steps'?)"),
    ('[[jobs]]\nsteps = "3"\n', "jobs[0].steps: expected an integer, got '3' (str)"),
    ("[[jobs]]\nsteps = true\n", "jobs[0].steps: expected an integer, got True (bool)"),
    ("[[jobs]]\nsteps = 0\n", "jobs[0].steps: must be >= 1, got 0"),
    ("[[jobs]]\nmomentum = 1\n", "jobs[0].momentum: must be < 1.0, got 1"),
    ("[[jobs]]\nmomentum = -0.5\n", "jobs[0].momentum: must be >= 0.0, got -0.5"),
    ("[[jobs]]\nouter_lr = -0.1\n", "jobs[0].outer_lr: must be > 0.0, got -0.1"),
    ("[[jobs]]\ninit_lr = inf\n", "jobs[0].init_lr: must be finite, got inf"),
    ('[[jobs]]\narchs = "2-layer"\n', "jobs[0].archs: expected a non-empty list of strings, got '2-layer'"),
    ('[[jobs]]\narchs = ["2-layer", "3layer"]\n', "jobs[0].archs[1]: unknown arch name '3layer'; expected one of"),
    ('[[jobs]]\ndata = "moon"\n', "jobs[0].data: unknown data set 'moon'; expected one of ['moons'"),
    ('[[jobs]]\ndata = "missing.csv"\n', "jobs[0].data: no CSV file at"),
    ('[[jobs]]\ndata = "missing.csv"\n', "jobs[0].label: required with the CSV data 'missing.csv'"),
    ('[[jobs]]\ndata = "missing.npz"\n', "jobs[0].data: no NPZ file at"),
    (
        '[[jobs]]\ndtype = "float16"\n',
        "jobs[0].dtype: expected one of 'float32' or 'float64', got 'float16'",
    ),
    (
        '[[jobs]]\narchs = ["1-layer", "2-layer"]\nmodels = 3\n',
        "jobs[0].models: 3 does not match the 2 archs",
    ),
    (
        '[[jobs]]\nmethod = "reversible"\n',
        "jobs[0].momentum: method 'reversible' needs momentum > 0, got 0.0",
    ),
    (
        '[[jobs]]\n[[jobs]]\n[jobs.evaluate]\nstrategies = ["s4"]\n',
        "jobs[1].evaluate.strategies[0]: expected one of 'none', 's1', 's2' or 's3', got 's4'",
    ),
    ("[[jobs]]\n[jobs.evaluate]\nint = 3\n", "jobs[0].evaluate.int: unknown key (did you mean 'inits'?)"),
    (
        '[evaluate]\ntest_archs = ["5layer"]\n[[jobs]]\n',
        "evaluate.test_archs[0]: unknown arch name '5layer'",
    ),
    ('[defaults]\nname = "x"\n[[jobs]]\n', "defaults.name: unknown key"),
    ("[defaults]\nseed = -1\n[[jobs]]\n", "defaults.seed: must be >= 0, got -1"),
    ('data_parallel = "yes"\n[[jobs]]\n', "data_parallel: expected true or false, got 'yes' (str)"),
    ("[[jobs]]\n[[jobs]]\n", "jobs[1].name: 'moons-2-layer' is already the name of jobs[0]"),
    ('[[jobs]]\nname = "a/b"\n', "jobs[0].name: must be a folder name"),
    (
        '[[jobs]]\ndata = "my data.csv"\nlabel = "y"\n',
        "jobs[0].name: the name made from data and archs, must",
    ),
    ("[[jobs]\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m.split(":")[0] for _, m in BAD_FILES])
def test_bad_job_file_names_the_key(tmp_path, text, message):
    write(tmp_path / "my data.csv", "x,y\n")
    with pytest.raises(ValueError) as error:
        jobfile.parse(text, tmp_path / "job.toml")
    assert f"job.toml: {message}" in str(error.value)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    text = '[[jobs]]\nsteps = 0\nmethod = "x"\n[[jobs]]\narchs = ["nope"]\n'
    with pytest.raises(ValueError) as error:
        jobfile.parse(text, tmp_path / "job.toml")
    lines = str(error.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["jobs[0].steps", "jobs[0].method", "jobs[1].archs[0]"]


def test_jobs_runs_names_seeds_and_defaults(tmp_path):
    write(tmp_path / "points.csv", "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    text = (
        "[defaults]\nseed = 10\n[evaluate]\ninits = 3\n"
        "[[jobs]]\nrestarts = 5\nbatch_restarts = 2\n"
        '[[jobs]]\ndata = "points.csv"\nlabel = "label"\narchs = ["1-layer", "4-layer"]\n[jobs.evaluate]\ninits = 1\n'
    )
    parsed = jobfile.parse(text, tmp_path / "job.toml")
    assert [job.name for job in parsed.jobs] == [
        *(f"moons-2-layer-r{r}" for r in range(5)),
        "points-1-layer+4-layer-r0",
    ]
    assert [job.seed for job in parsed.jobs] == [10, 11, 12, 13, 14, 10]
    assert [(run.first, run.count) for run in runs(parsed)] == [(0, 2), (2, 2), (4, 1), (0, 1)]
    first, second = parsed.configs
    assert first.internal_archs == ("2-layer",) * 3 and second.internal_archs == ("1-layer", "4-layer")
    assert (
        first.evaluate.inits == 3
        and second.evaluate.inits == 1
        and first.evaluate.strategies == ("none", "s1", "s2", "s3")
    )
    assert second.data == str((tmp_path / "points.csv").resolve())
    assert set(first.record()) == set(jobfile.Config.model_fields) - {"save_every", "data_root"}
    assert (first.index, second.index) == (0, 1)


def test_three_problems_give_three_messages_with_their_key_paths(tmp_path):
    text = '[defaults]\nseed = -1\n[[jobs]]\nstesp = 3\n[[jobs]]\narchs = ["1-layer", "2-layer"]\nmodels = 3\n'
    assert problems(text, tmp_path) == [
        "job.toml: defaults.seed: must be >= 0, got -1",
        "job.toml: jobs[0].stesp: unknown key (did you mean 'steps'?); expected one of "
        f"{list(jobfile.Config.model_fields)}",
        "job.toml: jobs[1].models: 3 does not match the 2 archs (one model each); leave it out or set it to 2",
    ]


def test_unknown_keys_with_suggestions_at_every_level(tmp_path):
    text = "datta_parallel = true\n[evaluate]\ninit = 2\n[[jobs]]\nbatchsize = 8\n[jobs.evaluate]\nfigure = false\n"
    lines = problems(text, tmp_path)
    assert [line.split(" (did you mean ")[1].split("?")[0] for line in lines] == [
        "'inits'",
        "'figures'",
        "'batch_size'",
        "'data_parallel'",
    ]
    assert [line.split(": ")[1] for line in lines] == [
        "evaluate.init",
        "jobs[0].evaluate.figure",
        "jobs[0].batchsize",
        "datta_parallel",
    ]
    assert lines[-1].endswith("expected one of ['data_parallel', 'defaults', 'evaluate', 'jobs']")


def test_wrong_types(tmp_path):
    text = (
        'data_parallel = "yes"\n[[jobs]]\nsteps = 2.5\nmomentum = true\nlabel = 3\narchs = ["2-layer", 4]\n'
        'soft_labels = 1\n[jobs.evaluate]\ntest_archs = "2-layer"\n'
    )
    assert problems(text, tmp_path) == [
        "job.toml: data_parallel: expected true or false, got 'yes' (str)",
        "job.toml: jobs[0].label: expected a string, got 3 (int)",
        "job.toml: jobs[0].archs[1]: expected a string, got 4 (int)",
        "job.toml: jobs[0].steps: expected an integer, got 2.5 (float)",
        "job.toml: jobs[0].momentum: expected a number, got True (bool)",
        "job.toml: jobs[0].soft_labels: expected true or false, got 1 (int)",
        "job.toml: jobs[0].evaluate.test_archs: expected a non-empty list of strings, got '2-layer' (str)",
    ]


def test_bad_values(tmp_path):
    text = (
        '[[jobs]]\ndata = "moon"\narchs = []\nbatch_size = 0\nmethod = "reversible"\ninit_lr = nan\n'
        'dtype = "float16"\n[jobs.evaluate]\nstrategies = ["s1", "s9"]\n'
    )
    lines = problems(text, tmp_path)
    assert lines[0].startswith("job.toml: jobs[0].data: unknown data set 'moon'; expected one of ['moons', ")
    assert lines[1:] == [
        "job.toml: jobs[0].archs: expected a non-empty list of strings, got []",
        "job.toml: jobs[0].init_lr: must be finite, got nan",
        "job.toml: jobs[0].batch_size: must be >= 1, got 0",
        "job.toml: jobs[0].dtype: expected one of 'float32' or 'float64', got 'float16'",
        "job.toml: jobs[0].evaluate.strategies[1]: expected one of 'none', 's1', 's2' or 's3', got 's9'",
    ]  # problems between keys (here: reversible without momentum) come once each key is valid
    text = text.replace('data = "moon"', 'data = "moons"').replace("archs = []", 'archs = ["2-layer"]')
    assert problems(text.replace("nan", "0.1").replace("0\n", "8\n").replace("16", "64").replace("s9", "s3"),
                    tmp_path) == ["job.toml: jobs[0].momentum: method 'reversible' needs momentum > 0, got 0.0"]


def test_duplicate_names_given_or_made(tmp_path):
    text = '[[jobs]]\n[[jobs]]\nname = "x"\n[[jobs]]\narchs = ["2-layer"]\n[[jobs]]\nname = "x"\n'
    assert problems(text, tmp_path) == [
        "job.toml: jobs[2].name: 'moons-2-layer' is already the name of jobs[0]; give each job a distinct name",
        "job.toml: jobs[3].name: 'x' is already the name of jobs[1]; give each job a distinct name",
    ]


# ---- image data, architecture names and the new keys ----

IMAGE_FILES = [
    ('[[jobs]]\narchs = ["3layer"]\n', "jobs[0].archs[0]: unknown arch name '3layer'; expected one of 'N-layer', "
     "'mlp[w1,w2,...]', 'lenet', 'convnet', 'convnet-D', 'convnet[depth=D,width=W,norm=N]', or an import string"),
    ('[[jobs]]\narchs = ["no_such_pkg.nets:tiny"]\n',
     "jobs[0].archs[0]: cannot import module 'no_such_pkg.nets' of arch 'no_such_pkg.nets:tiny'"),
    ('[[jobs]]\narchs = ["os.path:no_such_net"]\n', "jobs[0].archs[0]: module 'os.path' has no attribute"),
    ('[[jobs]]\narchs = ["convnet[norm=foo]"]\n', "jobs[0].archs[0]: convnet: unknown norm 'foo'"),
    ('[[jobs]]\narchs = ["convnet[depth=x]"]\n', "jobs[0].archs[0]: depth must be a positive integer"),
    ('[evaluate]\ntest_archs = ["lenet", "os:nope"]\n[[jobs]]\n', "evaluate.test_archs[1]: module 'os' has no"),
    ('[[jobs]]\ninit = "zeros"\n', "jobs[0].init: expected one of 'noise' or 'real', got 'zeros'"),
    ('[[jobs]]\ntheta0 = "same"\n', "jobs[0].theta0: expected one of 'random' or 'fixed', got 'same'"),
    ("[[jobs]]\nouter_steps = 0\n", "jobs[0].outer_steps: must be >= 1, got 0"),
    ('[[jobs]]\nouter_steps = "3"\n', "jobs[0].outer_steps: expected an integer, got '3' (str)"),
    ('[[jobs]]\ndevice = "gpu"\n', "jobs[0].device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ('[[jobs]]\ndata_root = 3\n', "jobs[0].data_root: expected a string, got 3 (int)"),
    ('[[jobs]]\ndata = "no-such-folder"\n', "jobs[0].data: unknown data set 'no-such-folder'; expected one of "
     "['moons', 'circles', 'blobs', 'breast_cancer', 'iris', 'wine', 'digits', 'digits-images', 'mnist', "
     "'fashion-mnist', 'cifar10', 'cifar100'], a .csv/.npz file or an image folder"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", IMAGE_FILES, ids=[m.split(":")[0] for _, m in IMAGE_FILES])
def test_bad_image_job_names_the_key(tmp_path, text, message):
    assert any(line.startswith(f"job.toml: {message}") for line in problems(text, tmp_path))


def test_image_data_archs_and_new_keys(tmp_path):
    (tmp_path / "shapes" / "circle").mkdir(parents=True)
    write(tmp_path / "set.npz", "")
    text = (
        '[defaults]\ndata_root = "data"\ninit = "real"\ntheta0 = "fixed"\nouter_steps = 3\n'
        '[[jobs]]\nname = "m"\ndata = "mnist"\narchs = ["lenet", "convnet-2", "convnet[depth=2,width=8,norm=batch]"]\n'
        'device = "cuda:1"\n'
        '[[jobs]]\nname = "f"\ndata = "shapes"\narchs = ["lenet", "torch.nn:Identity"]\ndevice = "cuda"\n'
        '[[jobs]]\ndata = "set.npz"\ninit = "noise"\n'
        '[[jobs]]\ndata = "digits-images"\n[jobs.evaluate]\ntest_archs = ["lenet"]\n'
    )
    mnist, folder, npz, digits = jobfile.parse(text, tmp_path / "job.toml").configs
    assert [c.name for c in (mnist, folder, npz, digits)] == ["m", "f", "set-2-layer", "digits-images-lenet"]
    assert mnist.data == "mnist" and mnist.data_root == str((tmp_path / "data").resolve())
    assert folder.data == str((tmp_path / "shapes").resolve()) and npz.data == str((tmp_path / "set.npz").resolve())
    assert (mnist.init, mnist.theta0, mnist.outer_steps, mnist.device) == ("real", "fixed", 3, "cuda:1")
    assert (npz.init, folder.device, npz.device) == ("noise", "cuda", "cpu")
    assert digits.evaluate.test_archs == ("lenet",) and npz.evaluate.test_archs is None
    assert "data_root" not in mnist.record() and mnist.record()["outer_steps"] == 3


def test_image_jobs_take_the_image_defaults_for_the_keys_they_leave_out(tmp_path):
    """As ``memdistill distill`` does: on image data (a named set, a .npz of images) the keys that
    neither the job nor ``[defaults]`` sets are Wang et al.'s setting; tables keep the paper's."""
    np.savez(tmp_path / "pics.npz", x=np.zeros((4, 1, 8, 8)), y=np.arange(4) % 2)
    np.savez(tmp_path / "rows.npz", x=np.zeros((4, 3)), y=np.arange(4) % 2)
    text = ('[defaults]\nper_class = 2\n[[jobs]]\ndata = "mnist"\n'
            '[[jobs]]\ndata = "pics.npz"\nouter_epochs = 2\nsteps = 4\n'
            '[[jobs]]\ndata = "digits-images"\narchs = ["lenet", "convnet"]\n[[jobs]]\ndata = "rows.npz"\n')
    mnist, pics, mixed, rows = jobfile.parse(text, tmp_path / "job.toml").configs
    assert mnist.name == "mnist-lenet" and mnist.internal_archs == ("lenet",)
    assert (mnist.steps, mnist.epochs, mnist.per_class, mnist.init, mnist.init_lr, mnist.outer_lr, mnist.outer_steps,
            mnist.batch_size, mnist.method) == (10, 3, 2, "real", 0.1, 0.005, 1000, 256, "auto")
    assert mnist.record()["steps"] == 10 and mnist.record()["method"] == "auto"
    assert (pics.steps, pics.epochs, pics.outer_epochs, pics.outer_steps) == (4, 3, 2, None)  # counted in epochs
    assert mixed.models is None and mixed.internal_archs == ("lenet", "convnet")  # one model each
    assert (rows.name, rows.internal_archs, rows.steps, rows.per_class, rows.init, rows.method, rows.outer_steps) == (
        "rows-2-layer", ("2-layer",) * 3, 40, 2, "noise", "replay", None)


def test_a_bad_default_is_reported_once_and_the_jobs_still_checked(tmp_path):
    text = '[defaults]\ninit = "zeros"\n[[jobs]]\n[[jobs]]\narchs = ["1-layer", "2-layer"]\nmodels = 3\n'
    assert problems(text, tmp_path) == [
        "job.toml: defaults.init: expected one of 'noise' or 'real', got 'zeros'",
        "job.toml: jobs[1].models: 3 does not match the 2 archs (one model each); leave it out or set it to 2",
    ]


# ---- the schema ----


def test_defaults_are_the_papers_protocol():
    config, paper = jobfile.parse("[[jobs]]\n").configs[0], Protocol()
    for key in ("data", "steps", "epochs", "per_class", "method", "momentum", "init_lr", "outer_lr"):
        assert getattr(config, key) == getattr(paper, key), key
    assert (config.outer_epochs, config.batch_size, config.seed) == (paper.outer_epochs, paper.batch_size, paper.seed)
    assert config.evaluate == jobfile.Evaluation(inits=paper.eval_inits)
    assert config.evaluate.test_archs is None  # the batch's default: the paper's MLPs (tabular), the archs (images)
    assert (config.init, config.theta0, config.device, config.outer_steps, config.data_root) == (
        "noise", "random", "cpu", None, None
    )
    assert (config.name, config.archs, config.models, config.restarts, config.save_every) == (
        "moons-2-layer",
        ("2-layer",),
        None,
        1,
        50,
    )


def test_configs_are_frozen_and_numbers_are_floats():
    config = jobfile.parse("[[jobs]]\ninit_lr = 1\n").configs[0]
    assert config.init_lr == 1.0 and isinstance(config.init_lr, float)
    with pytest.raises(ValidationError):
        config.steps = 3


def test_readme_table_is_the_schema():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- jobfile-keys:start -->\n(.*?)<!-- jobfile-keys:end -->", text, re.S)
    assert block, "README.md has no <!-- jobfile-keys:start --> … <!-- jobfile-keys:end --> block"
    documented = re.findall(r"^\| `([\w.]+)` \|", block.group(1), re.M)
    fields = [
        *jobfile.Document.model_fields,
        *(f"jobs.{key}" for key in jobfile.Config.model_fields),
        *(f"evaluate.{key}" for key in jobfile.Evaluation.model_fields),
    ]
    assert sorted(documented) == sorted(fields), "README.md documents other job-file keys than the models have"
    assert block.group(1) == jobfile.schema_table(), (
        "README.md's job-file table is stale; put the output of "
        "python -c 'from memdistill.apps.jobfile import schema_table; print(schema_table(), end=\"\")' between its markers"
    )
