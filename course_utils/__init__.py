"""Helpers shared by the LLM training workbook notebooks and scripts.

One module per topic: ``env``, ``data``, ``cleaning``, ``datagen`` (a package: one module per generated file),
``tasks``, ``chat_formats``, ``tokenizer``, ``collate``, ``loss``, ``models``, ``train``, ``sft``, ``lora``,
``peft_methods``, ``memory``, ``preference``, ``evaluation``, ``export``, ``plotting``, ``exercises``, ``solutions``,
``bootstrap``. Import the module you need, e.g. ``from course_utils import env, models``.

``PROJECT_ROOT`` is the repository (its ``data_samples/`` and ``configs/``), found from this package's folder in a
clone; if the package was installed on its own (a wheel in ``site-packages`` has no data), from ``$WORKBOOK_ROOT``
or the working directory and its parents — never ``site-packages``.
"""

import os
from pathlib import Path

__version__ = "0.1.0"


def _find_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    if (here / "data_samples").is_dir():
        return here
    candidates = [Path(os.environ["WORKBOOK_ROOT"])] if os.environ.get("WORKBOOK_ROOT") else []
    candidates += [Path.cwd(), *Path.cwd().parents]
    for candidate in candidates:
        if (candidate / "data_samples").is_dir() and (candidate / "course_utils").is_dir():
            return candidate.resolve()
    raise ImportError(
        f"course_utils is installed at {here} without the workbook's data_samples/: open the notebooks from a clone "
        "of the repository (or run a notebook's setup cell, which fetches it), or set WORKBOOK_ROOT to the clone."
    )


PROJECT_ROOT: Path = _find_root()
DATA_DIR: Path = PROJECT_ROOT / "data_samples"
#: The committed tiny base model and its tokenizer (``scripts/make_tiny_base.py``); ``models.LOCAL_MODELS["tiny-base"]``.
TINY_BASE_DIR: Path = DATA_DIR / "tiny_base"
