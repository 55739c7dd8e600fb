"""A notebook opened on its own (Colab, AutoDL): the setup cell fetches the workbook, and the URLs agree.

The student simulation copies one notebook into an empty folder, points ``WORKBOOK_REPO_URL`` at this repository
(``file://``) and runs it with a Python that cannot import the workbook (a ``sitecustomize`` removes the editable
install), as the runner runs every notebook; then the same with an unreachable URL, which must end in one sentence.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from course_utils import PROJECT_ROOT, bootstrap, env

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HIDE_WORKBOOK = '''"""Test helper: a Python without the workbook installed (the editable finder and the repository are dropped).

Every process but the project's runner (the test harness, which imports the installed package like every script):
the kernel it starts is the student's, which lacks the workbook.
"""
import os
import sys

if not any(arg.endswith("run_notebooks.py") for arg in sys.orig_argv):
    hidden = os.path.realpath(os.environ["WORKBOOK_HIDE"])
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", None) or "")]
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != hidden]
'''


def setup_cell(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join([c for c in nb["cells"] if c["cell_type"] == "code"][1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_setup_cell_is_the_bootstrap_cell(path):
    assert setup_cell(path) == bootstrap.SETUP_CELL


def test_badges_clone_url_and_package_metadata_agree():
    urls = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    repo = urls["Repository"]
    assert repo == bootstrap.REPO_URL and f'"{repo}"' in bootstrap.SETUP_CELL
    owner_name = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repo).group(1)
    for path in NOTEBOOKS:
        title = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
        badges = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", title)
        assert badges == [f"{owner_name}/blob/main/notebooks/{path.name}"], (path.name, badges)


def test_missing_requirements_never_touch_the_kernel_packages():
    pyproject = PROJECT_ROOT / "pyproject.toml"
    pins = env.read_pins(pyproject)
    everything_but_peft = {name: "0" for name in pins if name != "peft"}
    assert bootstrap.missing_requirements(pyproject, everything_but_peft) == [f"peft=={pins['peft']}"]
    nothing = bootstrap.missing_requirements(pyproject, {})
    assert not any(req.split("==")[0] in bootstrap.KERNEL_PACKAGES for req in nothing)  # torch, Jupyter stay
    assert "torch==2.13.0" not in nothing and f"trl=={pins['trl']}" in nothing


def test_wrong_python_is_one_sentence():
    with pytest.raises(SystemExit) as error:
        bootstrap.check_python((3, 9))
    message = str(error.value)
    assert message.startswith("This workbook needs Python 3.10 to 3.12, not 3.9") and message.count(".") <= 6
    bootstrap.check_python((3, 11))


def play_student(tmp_path: Path, repo_url: str) -> tuple[dict, dict]:
    """Copy 00_environment.ipynb into an empty folder and run it as a student whose Python lacks the workbook."""
    folder = tmp_path / "colab"
    folder.mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / "00_environment.ipynb", folder)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_WORKBOOK, encoding="utf-8")
    environment = env.child_environment(
        PYTHONPATH=str(hide),
        WORKBOOK_HIDE=str(PROJECT_ROOT),
        WORKBOOK_REPO_URL=repo_url,
        WORKBOOK_FIGURES_DIR=str(tmp_path / "figures"),
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import course_utils"], env={**environment}, cwd=folder, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'course_utils'" in probe.stderr  # really not installed
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "scripts" / "run_notebooks.py"),
            "--out",
            str(out),
            str(folder / "00_environment.ipynb"),
        ],
        env=environment,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    row = json.loads((out / "summary.json").read_text(encoding="utf-8"))[0]
    html = (out / "00_environment.html").read_text(encoding="utf-8")
    title = "".join(json.loads((folder / "00_environment.ipynb").read_text(encoding="utf-8"))["cells"][0]["source"])
    assert f"<title>{title.splitlines()[0].lstrip('# ')}</title>" in html, "the HTML copy is titled by the notebook"
    return row, json.loads((out / "00_environment.ipynb").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_student_opens_one_notebook_alone_and_it_runs(tmp_path):
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("needs the repository's git history to clone from")
    row, executed = play_student(tmp_path, f"file://{PROJECT_ROOT}")
    assert row["status"] == "ok", row
    text = "".join(
        "".join(o.get("text", ""))
        for o in [c for c in executed["cells"] if c["cell_type"] == "code"][1].get("outputs", [])
    )
    clone = tmp_path / "colab" / "llm-training-workbook"
    assert f"workbook: {clone} | data: {clone / 'data_samples'} |" in text, text
    assert "tiny_base" in text and "installed now: nothing" in text
    assert (clone / "data_samples" / "tiny_base" / "model.safetensors").exists()


@pytest.mark.slow
def test_student_without_access_gets_one_sentence(tmp_path):
    row, executed = play_student(tmp_path, f"file://{tmp_path}/no-such-repository")
    assert row["status"] == "FAILED"
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [e["ename"] for e in errors] == ["SystemExit"]
    message = errors[0]["evalue"]
    assert message.startswith(
        f"Could not fetch the workbook from file://{tmp_path}/no-such-repository: check the "
        "network, or set WORKBOOK_REPO_URL to a mirror"
    )
    assert message.count(". ") == 0 and "Traceback" not in message
