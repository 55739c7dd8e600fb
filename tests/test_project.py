"""Project-level checks: pins agree between pyproject.toml and environment.yml, notebooks follow the conventions."""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_dependency_is_pinned_and_environment_yml_agrees():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(re.match(r"^[A-Za-z0-9_.\-]+==[0-9][^ ]*$", dep) for dep in deps), deps
    assert "torch==2.13.0" in deps
    env_yml = (ROOT / "environment.yml").read_text()
    for dep in deps:
        assert f"- {dep}\n" in env_yml, f"environment.yml lacks {dep}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make workbook" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "colab.research.google.com" in first, "title cell with Colab badge"
    assert "学习目标" in first and "前置知识" in first, "learning goals and prerequisites"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell is tagged `parameters`"
    assert "setup_offline" in "".join(code[1]["source"]), "second code cell is the setup cell"
    assert any("assert" in "".join(c["source"]) for c in code), "checkpoint cells assert"
    assert all(c.get("outputs") is not None for c in code)
    assert any(c.get("outputs") for c in code), "committed with outputs"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "a stored error"
    assert all(c.get("execution_count") is not None for c in code if "".join(c["source"]).strip()), "fully executed"
