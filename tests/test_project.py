"""Project-level checks: pins agree between pyproject.toml and environment.yml, notebooks follow the conventions."""

import json
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_dependency_is_pinned_and_environment_yml_agrees():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(re.match(r"^[A-Za-z0-9_.\-]+==[0-9][^ ]*$", dep) for dep in deps), deps
    assert "torch==2.13.0" in deps
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert all(re.match(r"^[A-Za-z0-9_.\-]+==[0-9][^ ]*$", dep) for dep in dev), dev
    env_yml = (ROOT / "environment.yml").read_text()
    for dep in deps + dev:
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_parameters_cell_parses_fully_and_kernelspec_is_shared(path):
    """papermill reads every assignment of the parameters cell (a comment holding '=' made it skip the line,
    "Unable to parse"), so `-p NAME value` reaches the notebook; every notebook has the same kernelspec."""
    from papermill.translators import PythonTranslator

    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assigned = [
        line.split("=", 1)[0].strip() for line in source.splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*\s*=", line)
    ]
    parsed = [p.name for p in PythonTranslator.inspect({"source": source})]
    assert parsed == assigned, (parsed, assigned)
    assert nb["metadata"]["kernelspec"] == {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }


def test_profiles_name_every_notebook_and_only_declared_parameters():
    from papermill.translators import PythonTranslator

    profiles = json.loads((ROOT / "configs" / "notebook_profiles.json").read_text(encoding="utf-8"))
    assert sorted(profiles["notebooks"]) == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        declared = {p.name for p in PythonTranslator.inspect({"source": "".join(cell["source"])})}
        entry = profiles["notebooks"][path.stem]
        for profile in ("standin", "gpu"):
            assert set(entry[profile]) <= declared, (path.stem, profile, set(entry[profile]) - declared)
        assert ("MODEL" in declared) == entry["uses_model"], path.stem
        source = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        if entry["uses_model"]:
            assert f'check_fits("{path.stem}"' in source, f"{path.stem} does not check that MODEL fits"


def test_no_notebook_or_script_keeps_its_own_model_registry():
    """Model names resolve in course_utils.models alone: no folder table of data_samples/tiny_* elsewhere."""
    sources = [p for p in (ROOT / "scripts").glob("*.py")] + [
        p for p in (ROOT / "course_utils").rglob("*.py") if p.name != "models.py"
    ]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r'"tiny-(base|sft)"\s*:\s*', text), path.name
        loads = re.search(r"(?<!`)AutoModel\w*\.from_pretrained\(", text)  # a backticked one is prose
        assert not loads or path.name == "evaluation.py", path.name  # evaluation reloads the folders it saved
    for path in NOTEBOOKS:
        code = "".join(
            "".join(c["source"])
            for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"
        )
        assert not re.search(r'DATA_DIR / "tiny_sft', code), path.name
        assert not re.search(r"pref\.load_(?!preference_rows)", code) and "resolve_model_path(SFT" not in code, (
            path.name
        )


#: stderr text a committed notebook may show (regular expressions); everything else is noise to fix at its source.
STDERR_ALLOWED: tuple[str, ...] = ()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_stderr_noise_in_stored_outputs(path):
    """Students see the stored outputs on GitHub, Colab and in the HTML copies: no linker errors, kernel warnings or
    library chatter (e.g. DeepSpeed's op probe printed `/usr/bin/ld: cannot find -laio` in notebook 08)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    noise = []
    for index, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                for line in "".join(output["text"]).splitlines():
                    if line.strip() and not any(re.search(allowed, line) for allowed in STDERR_ALLOWED):
                        noise.append((index, line[:120]))
    assert not noise, noise


def test_docstrings_cite_only_files_that_exist():
    """A command in a docstring or README that names a config file must name one that is in the repository."""
    sources = list((ROOT / "scripts").glob("*.py")) + list((ROOT / "course_utils").rglob("*.py")) + [ROOT / "README.md"]
    cited = {
        (path.name, match)
        for path in sources
        for match in re.findall(r"\bconfigs/[\w.-]+\.(?:json|yaml|yml)\b", path.read_text(encoding="utf-8"))
    }
    missing = sorted((name, rel) for name, rel in cited if not (ROOT / rel).exists())
    assert cited and not missing, missing


def test_pretrain_json_config_parses():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pretrain
    finally:
        sys.path.pop(0)
    model_args, data_args, training_args = pretrain.parse_args([str(ROOT / "configs" / "pretrain_tiny.json")])
    assert model_args.config_name == "tiny" and data_args.block_size == 64 and training_args.max_steps == 40


def test_readme_times_equal_the_title_cells():
    """Both are written from one `make notebooks` run (`run_notebooks.py --record-times`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        title = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
        measured = re.search(
            r"\*\*CPU 耗时\*\*：2 核 CPU 约 (\d+) 秒 \(`make notebooks` 在开发机上实测 (\d+) 秒\)", title
        )
        row = re.search(rf"^\| `{re.escape(path.name)}` \|[^|]*\| (\d+) s \|", readme, re.M)
        assert measured and row, path.name
        assert measured.group(2) == row.group(1), (path.name, measured.group(2), row.group(1))


def test_run_summary_flags_the_budgets(load_script):
    """The runner's summary marks a notebook over 2 minutes and a workbook over 5 minutes (issue 16's budgets)."""
    runner = load_script("run_notebooks")
    assert (runner.NOTEBOOK_BUDGET_S, runner.TOTAL_BUDGET_S) == (120, 300)
    row = {"status": "ok", "figures": {}, "error": ""}
    within = runner.format_table([{**row, "notebook": n, "seconds": 100.0} for n in "abc"])
    assert "over" not in within
    over = runner.format_table(
        [{**row, "notebook": n, "seconds": s} for n, s in (("a", 121.0), ("b", 90.0), ("c", 90.0))]
    )
    assert "| 121.0 (over 120 s budget) |" in over and "| 301.0 (over 300 s budget) |" in over
    assert "| 90.0 | ok |" in over


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_progress_bar_widgets_in_stored_outputs(path):
    """A headless run draws no tqdm widget (a stored one shows as a frozen 0 % bar on GitHub and in the HTML)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    widgets = [
        index
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        and re.search(r"\d+%\|", "".join(output["data"].get("text/plain", "")))
    ]  # a tqdm bar, not a widget
    assert not widgets, widgets


def test_one_word_for_the_course_material():
    """The course's source material is '讲义' (code: 'slides'); '种子' alone would read as a random seed."""
    sources = list(NOTEBOOKS) + list((ROOT / "slides").glob("*.md")) + [ROOT / "README.md"]
    clashes = [
        (path.name, match.group(0))
        for path in sources
        for match in re.finditer(r".{0,6}(?<!随机)种子.{0,6}", path.read_text(encoding="utf-8"))
    ]
    assert not clashes, clashes[:5]
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "course_utils").rglob("*.py"))
    assert not re.search(r"\bseeds?_(table|formula|preprocess)", code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_cell_relies_on_a_trailing_semicolon(path):
    """Jupyter hides a value after `;`, nbval does not: such a cell fails strict nbval. Assign the value instead."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    ending = [
        i for i, c in enumerate(cells) if c["cell_type"] == "code" and "".join(c["source"]).rstrip().endswith(";")
    ]
    assert not ending, ending


def test_no_code_passes_the_removed_safe_serialization_argument():
    """transformers 5 removed `save_pretrained(safe_serialization=...)` and swallows it silently (notebook 05 shows it);
    safetensors is the default in transformers and PEFT, so the project's code does not pass it."""
    files = [*ROOT.glob("course_utils/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py")]
    offenders = [
        str(p.relative_to(ROOT))
        for p in files
        if p.name != "test_project.py" and "safe_serialization=" in p.read_text(encoding="utf-8")
    ]
    assert not offenders, offenders


def test_every_mutation_still_finds_its_line(load_script):
    """`make mutations` edits one exact line per mutation: moving lesson code must move the mutation with it (three
    had gone stale when train_step, encode_chat and LoRALinear moved into their notebooks' cells)."""
    script = load_script("mutation_check")
    for name, (rel, old, new, notebook) in script.MUTATIONS.items():
        assert (ROOT / rel).read_text(encoding="utf-8").count(old) == 1 and old != new, name
        assert (ROOT / "notebooks" / f"{notebook}.ipynb").exists(), name
