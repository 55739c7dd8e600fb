"""Helpers shared by the LLM training workbook notebooks and scripts.

One module per topic: ``env``, ``data``, ``datagen``, ``tokenizer``, ``collate``, ``loss``, ``models``,
``sft``, ``lora``, ``memory``, ``preference``, ``plotting``. Import the module you need, e.g.
``from course_utils import env, models``.
"""

from pathlib import Path

__version__ = "0.1.0"

PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent
DATA_DIR: Path = PROJECT_ROOT / "data_samples"
