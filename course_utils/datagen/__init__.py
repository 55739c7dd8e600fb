"""Seeded, deterministic generator for the course's sample data: one module per generated file.

Everything under ``data_samples/`` is produced by :func:`generate_all` from a single integer seed
(``python scripts/generate_data.py``). The content is invented here (a fictional "world" of countries, template
sentences, small arithmetic facts and word lists), so the data is CC0-1.0 and contains no third-party text.

=======================  ==================================================================================
module                   writes
=======================  ==================================================================================
``world``                nothing: the world, the held-out split (``task_splits``) and the shared helpers
``pretrain_corpus``      ``pretrain_corpus.jsonl``
``task_rows``            ``tasks_train.jsonl``, ``tasks_test.jsonl`` (the tasks themselves: ``course_utils.tasks``)
``alpaca_raw``           ``alpaca_raw.jsonl``, ``alpaca_raw_manifest.json``
``chats``                ``sft_messages.jsonl``, ``sharegpt_sample.jsonl``
``preference_pairs``     ``preference_train.jsonl``, ``preference_test.jsonl``
``bad_examples``         ``bad_examples/*.jsonl``
``readme``               ``README.md``
=======================  ==================================================================================

Determinism rules followed here:

* every random choice uses a private ``random.Random`` created from a string ``f"datagen:{seed}:{stream}"``
  (``world.stream_rng``; never the global ``random`` module);
* no iteration over sets, no floats in the written content;
* JSON is written with ``ensure_ascii=False`` and ``\\n`` line endings.

Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path

from course_utils.data import write_jsonl
from course_utils.datagen.alpaca_raw import BANNED_WORDS, DIRTY_KINDS, dirty_manifest, make_alpaca, make_alpaca_raw
from course_utils.datagen.bad_examples import BAD_EXAMPLES, bad_example_bytes
from course_utils.datagen.chats import make_sft_messages, make_sharegpt
from course_utils.datagen.preference_pairs import make_preference_pairs
from course_utils.datagen.pretrain_corpus import make_pretrain_corpus
from course_utils.datagen.readme import render_readme
from course_utils.datagen.task_rows import make_tasks
from course_utils.datagen.world import DEFAULT_SEED, Country, build_world, task_splits, world_facts

__all__ = [
    "BAD_EXAMPLES",
    "BANNED_WORDS",
    "DEFAULT_SEED",
    "DIRTY_KINDS",
    "FILES",
    "Country",
    "build_world",
    "dirty_manifest",
    "generate_all",
    "make_alpaca_raw",
    "make_pretrain_corpus",
    "make_preference_pairs",
    "make_sft_messages",
    "make_sharegpt",
    "make_tasks",
    "task_splits",
    "world_facts",
]

#: Logical name -> file name (relative to the output directory).
FILES: dict[str, str] = {
    "pretrain": "pretrain_corpus.jsonl",
    "tasks_train": "tasks_train.jsonl",
    "tasks_test": "tasks_test.jsonl",
    "alpaca_raw": "alpaca_raw.jsonl",
    "alpaca_manifest": "alpaca_raw_manifest.json",
    "sft_messages": "sft_messages.jsonl",
    "sharegpt": "sharegpt_sample.jsonl",
    "preference_train": "preference_train.jsonl",
    "preference_test": "preference_test.jsonl",
    "bad_broken_line": "bad_examples/broken_line.jsonl",
    "bad_missing_field": "bad_examples/missing_field.jsonl",
    "bad_wrong_type": "bad_examples/wrong_type.jsonl",
    "bad_empty_field": "bad_examples/empty_field.jsonl",
    "bad_non_utf8": "bad_examples/non_utf8.jsonl",
    "bad_roles": "bad_examples/bad_roles.jsonl",
    "bad_no_assistant": "bad_examples/no_assistant.jsonl",
    "readme": "README.md",
}


def generate_all(out_dir: Path, seed: int = DEFAULT_SEED, scale: float = 1.0) -> dict[str, Path]:
    """Write every sample-data file (and README.md) under ``out_dir``; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in FILES.items()}
    write_jsonl(make_pretrain_corpus(seed, scale), paths["pretrain"])
    tr, te = make_tasks(seed, scale)
    write_jsonl(tr, paths["tasks_train"])
    write_jsonl(te, paths["tasks_test"])
    rows, manifest = make_alpaca(seed, scale)
    write_jsonl(rows, paths["alpaca_raw"])
    paths["alpaca_manifest"].write_text(
        json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8", newline="\n"
    )
    write_jsonl(make_sft_messages(seed, scale), paths["sft_messages"])
    write_jsonl(make_sharegpt(seed, scale), paths["sharegpt"])
    ptr, pte = make_preference_pairs(seed, scale)
    write_jsonl(ptr, paths["preference_train"])
    write_jsonl(pte, paths["preference_test"])
    (out_dir / "bad_examples").mkdir(exist_ok=True)
    for name, data in bad_example_bytes().items():
        (out_dir / "bad_examples" / name).write_bytes(data)
    paths["readme"].write_text(render_readme(out_dir, paths, seed, scale), encoding="utf-8", newline="\n")
    return paths
