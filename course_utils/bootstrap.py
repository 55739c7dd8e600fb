"""Bootstrap: a notebook opened on its own (Colab, AutoDL, a downloaded .ipynb) fetches the whole workbook and runs.

Every notebook's setup cell is :data:`SETUP_CELL` (``tests/test_bootstrap.py`` checks it, word for word). When the
notebook sits inside a clone it only puts the clone on ``sys.path``. Opened alone, it makes a shallow ``git clone``
of :data:`REPO_URL` (``[project.urls] Repository`` in ``pyproject.toml``; ``WORKBOOK_REPO_URL`` overrides it, for a
mirror) next to the notebook, changes into its ``notebooks/`` folder and calls :func:`ready`, which installs the
pinned packages that are *missing* — never one the running kernel already has (Colab's torch and Jupyter stay) —
and prints one line saying where the code, the data and the models are. Every failure ends in one plain sentence
saying what to do (``SystemExit``), not a traceback.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

#: The repository every URL of the project comes from (badges, clone, package metadata); tested to agree.
REPO_URL = "https://github.com/llm-course/llm-training-workbook"
SUPPORTED_PYTHON = ((3, 10), (3, 12))
#: Packages a running Jupyter kernel already depends on: installing another version under it breaks the session
#: (old modules stay loaded while the files change), so they are never installed by the bootstrap.
KERNEL_PACKAGES = frozenset(
    {
        "torch",
        "ipykernel",
        "jupyterlab",
        "ipywidgets",
        "nbclient",
        "nbformat",
        "nbconvert",
        "numpy",
        "pandas",
        "matplotlib",
        "tensorboard",
    }
)

SETUP_CELL = """# Setup: works in a clone, and opened alone on Colab / AutoDL (it fetches the workbook). Run it before transformers.
import os, pathlib, subprocess, sys
ROOT = next((p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "course_utils").is_dir()), None)
if ROOT is None:  # opened alone: a shallow clone of the whole workbook (code, data, committed models) next to it
    # Mirror (e.g. from mainland China): os.environ["WORKBOOK_REPO_URL"] = "https://gitee.com/<you>/llm-training-workbook"
    REPO_URL = os.environ.get("WORKBOOK_REPO_URL", "https://github.com/llm-course/llm-training-workbook")
    ROOT = pathlib.Path(os.environ.get("WORKBOOK_DIR", "llm-training-workbook")).resolve()
    if not (ROOT / "course_utils").is_dir():
        import warnings; warnings.filterwarnings("ignore", message="To exit")  # a failure is one sentence below
        try:
            subprocess.run(["git", "clone", "--depth", "1", "--quiet", REPO_URL, str(ROOT)], check=True, timeout=900,
                           capture_output=True)
        except FileNotFoundError:
            raise SystemExit("git is not installed: install it (apt-get install git), or download the repository "
                             "as a zip from " + REPO_URL + " and open this notebook from its notebooks/ folder.") from None
        except (subprocess.SubprocessError, OSError):
            raise SystemExit("Could not fetch the workbook from " + REPO_URL + ": check the network, or set "
                             "WORKBOOK_REPO_URL to a mirror and run this cell again.") from None
    os.chdir(ROOT / "notebooks")
    sys.path.insert(0, str(ROOT))
    from course_utils import bootstrap
    bootstrap.ready(ROOT)  # installs only missing packages (never the kernel's torch/Jupyter), says where things are
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from course_utils import env
env.setup_offline(offline=OFFLINE)
env.seed_everything(SEED)"""


def check_python(version: tuple[int, int] | None = None) -> None:
    """Refuse, with one sentence, a Python outside the supported range."""
    major_minor = version or sys.version_info[:2]
    low, high = SUPPORTED_PYTHON
    if not low <= tuple(major_minor) <= high:
        raise SystemExit(
            f"This workbook needs Python {low[0]}.{low[1]} to {high[0]}.{high[1]}, not "
            f"{major_minor[0]}.{major_minor[1]}: choose another runtime or make a venv with one of those."
        )


def missing_requirements(pyproject: Path, installed: dict[str, str] | None = None) -> list[str]:
    """The pinned requirements (``name==version``) whose package is not installed at all, kernel packages excluded.

    A package present in another version is left alone: replacing it under a running kernel is what breaks it.
    """
    from course_utils.env import read_pins

    missing = []
    for name, version in read_pins(pyproject).items():
        if name in KERNEL_PACKAGES:
            continue
        if installed is not None:
            present = name.lower() in {key.lower() for key in installed}
        else:
            try:
                importlib.metadata.version(name)
                present = True
            except importlib.metadata.PackageNotFoundError:
                present = False
        if not present:
            missing.append(f"{name}=={version}")
    return missing


def ready(root: str | Path, install: bool = True) -> list[str]:
    """After the clone: check Python, install what is missing, print where code, data and models are.

    Returns the requirements it installed. A failed install ends in one sentence (``SystemExit``).
    """
    root = Path(root)
    check_python()
    missing = missing_requirements(root / "pyproject.toml")
    if missing and install:
        environment = {**os.environ, "DS_BUILD_OPS": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *missing], env=environment, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(
                f"pip could not install {', '.join(missing)}: check the network (or set PIP_INDEX_URL "
                "to a mirror, e.g. https://pypi.tuna.tsinghua.edu.cn/simple) and run this cell again."
            )
    data = root / "data_samples"
    models = (
        ", ".join(sorted(p.name for p in data.iterdir() if (p / "model.safetensors").exists()))
        if data.is_dir()
        else "none"
    )
    print(
        f"workbook: {root} | data: {data} | committed models: {models} | "
        f"installed now: {', '.join(missing) if missing and install else 'nothing'}"
    )
    return missing if install else []
