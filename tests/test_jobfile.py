"""Job files of memdistill batch: their schema (pydantic models, the README table made from
them), the jobs and runs they expand into, and every problem of a bad file reported at once."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from memdistill.apps import jobfile
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
        "jobs[0].method: unknown method 'adjiont'; expected one of ['autograd'",
    ),
    ("[[jobs]]\nstesp = 3\n", "jobs[0].stesp: unknown key (did you mean 'steps'?)"),
    ('[[jobs]]\nsteps = "3"\n', "jobs[0].steps: expected an integer, got '3' (str)"),
    ("[[jobs]]\nsteps = true\n", "jobs[0].steps: expected an integer, got True (bool)"),
    ("[[jobs]]\nsteps = 0\n", "jobs[0].steps: must be >= 1, got 0"),
    ("[[jobs]]\nmomentum = 1\n", "jobs[0].momentum: must be in [0, 1), got 1"),
    ("[[jobs]]\nouter_lr = -0.1\n", "jobs[0].outer_lr: must be positive and finite, got -0.1"),
    ('[[jobs]]\narchs = "2-layer"\n', "jobs[0].archs: expected a non-empty list of strings, got '2-layer'"),
    ('[[jobs]]\narchs = ["2-layer", "3layer"]\n', "jobs[0].archs[1]: unknown architecture '3layer'"),
    ('[[jobs]]\ndata = "moon"\n', "jobs[0].data: unknown data set 'moon'; expected one of ['moons'"),
    ('[[jobs]]\ndata = "missing.csv"\n', "jobs[0].data: no CSV file at"),
    ('[[jobs]]\ndata = "missing.csv"\n', "jobs[0].label: required with the CSV data 'missing.csv'"),
    (
        '[[jobs]]\ndtype = "float16"\n',
        "jobs[0].dtype: unknown dtype 'float16'; expected one of ['float32', 'float64']",
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
        "jobs[1].evaluate.strategies[0]: unknown strategy 's4'",
    ),
    ("[[jobs]]\n[jobs.evaluate]\nint = 3\n", "jobs[0].evaluate.int: unknown key (did you mean 'inits'?)"),
    (
        '[evaluate]\ntest_archs = ["5layer"]\n[[jobs]]\n',
        "evaluate.test_archs[0]: unknown architecture '5layer'",
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
    assert [(run.first, run.count) for run in parsed.runs] == [(0, 2), (2, 2), (4, 1), (0, 1)]
    first, second = parsed.configs
    assert first.internal_archs == ("2-layer",) * 3 and second.internal_archs == ("1-layer", "4-layer")
    assert (
        first.evaluate.inits == 3
        and second.evaluate.inits == 1
        and first.evaluate.strategies == ("none", "s1", "s2", "s3")
    )
    assert second.data == str((tmp_path / "points.csv").resolve())
    assert set(first.record()) == set(jobfile.Config.model_fields) - {"save_every"}
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
        "'data_parallel'",
        "'inits'",
        "'figures'",
        "'batch_size'",
    ]
    assert [line.split(": ")[1] for line in lines] == [
        "datta_parallel",
        "evaluate.init",
        "jobs[0].evaluate.figure",
        "jobs[0].batchsize",
    ]
    assert lines[0].endswith("expected one of ['data_parallel', 'defaults', 'evaluate', 'jobs']")


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
        "job.toml: jobs[0].init_lr: must be positive and finite, got nan",
        "job.toml: jobs[0].batch_size: must be >= 1, got 0",
        "job.toml: jobs[0].dtype: unknown dtype 'float16'; expected one of ['float32', 'float64']",
        "job.toml: jobs[0].evaluate.strategies[1]: unknown strategy 's9'; expected one of ['none', 's1', 's2', 's3']",
        "job.toml: jobs[0].momentum: method 'reversible' needs momentum > 0, got 0.0",
    ]


def test_duplicate_names_given_or_made(tmp_path):
    text = '[[jobs]]\n[[jobs]]\nname = "x"\n[[jobs]]\narchs = ["2-layer"]\n[[jobs]]\nname = "x"\n'
    assert problems(text, tmp_path) == [
        "job.toml: jobs[2].name: 'moons-2-layer' is already the name of jobs[0]; give each job a distinct name",
        "job.toml: jobs[3].name: 'x' is already the name of jobs[1]; give each job a distinct name",
    ]


# ---- the schema ----


def test_defaults_are_the_papers_protocol():
    config, paper = jobfile.parse("[[jobs]]\n").configs[0], Protocol()
    for key in ("data", "steps", "epochs", "per_class", "method", "momentum", "init_lr", "outer_lr"):
        assert getattr(config, key) == getattr(paper, key), key
    assert (config.outer_epochs, config.batch_size, config.seed) == (paper.outer_epochs, paper.batch_size, paper.seed)
    assert config.evaluate == jobfile.Evaluation(test_archs=paper.archs, inits=paper.eval_inits)
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
