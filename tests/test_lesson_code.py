"""The code a lesson writes in its cell is the code the package runs (d2l's ``#@save`` idea).

A cell that starts a definition with ``# Lesson code, saved as course_utils.<module>.<name> ...`` must hold the
same source as that function or class in the package, so the lesson and the tested module cannot drift apart.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re

import pytest

from course_utils import PROJECT_ROOT

MARKER = re.compile(r"^# Lesson code, saved as (.+?) \(tests/test_lesson_code\.py", re.MULTILINE)
NAME = re.compile(r"course_utils\.(\w+)\.(\w+)")

#: What each lesson promises to write in its cells (the notebook's learning goals say so).
EXPECTED = {
    ("05_pretraining", "train", "train_step"),
    ("06_sft_masking", "sft", "encode_chat"),
    ("07_lora", "lora", "LoRALinear"),
    ("07_lora", "lora", "inject_lora"),
    ("08_deepspeed_memory", "memory", "zero_model_states"),
}


def lesson_definitions() -> dict[tuple[str, str, str], str]:
    """``(notebook, module, name) -> source`` of every marked definition in the notebooks' code cells."""
    found: dict[tuple[str, str, str], str] = {}
    for path in sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or not (match := MARKER.search(source)):
                continue
            nodes = {
                node.name: node for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            }
            for module, name in NAME.findall(match.group(1)):
                assert name in nodes, f"{path.name}: the cell says it defines {name}, but it does not"
                found[(path.stem, module, name)] = ast.get_source_segment(source, nodes[name])
    return found


def test_every_promised_lesson_definition_is_in_its_cell():
    assert EXPECTED <= set(lesson_definitions()), sorted(EXPECTED - set(lesson_definitions()))


@pytest.mark.parametrize("key", sorted(lesson_definitions()), ids=lambda key: f"{key[0]}:{key[1]}.{key[2]}")
def test_lesson_cell_and_package_hold_the_same_code(key):
    notebook, module, name = key
    package = inspect.getsource(getattr(importlib.import_module(f"course_utils.{module}"), name)).rstrip("\n")
    assert lesson_definitions()[key] == package, (
        f"notebooks/{notebook}.ipynb defines {name} differently from course_utils/{module}.py: "
        "change both (the cell teaches it, the package runs it)"
    )
