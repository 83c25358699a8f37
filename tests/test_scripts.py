"""The README's two commands are the scripts CI runs, and the scripts parse."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["env.sh", "test", "reproduce"])
def test_script_is_valid_bash(name):
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], check=True)


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "scripts/test " in readme and "scripts/reproduce " in readme
    assert ci.count("\nscripts/test") == 2  # without and with the C++ extension
    assert "source scripts/env.sh" in ci
