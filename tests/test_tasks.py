"""Tests for course_utils/tasks.py: the checkable tasks' prompt, loading, answer extraction, scoring and reward."""

from __future__ import annotations

import pytest

from course_utils import DATA_DIR
from course_utils.data import DataFormatError
from course_utils.tasks import (
    TASK_SCHEMA,
    TASK_TYPES,
    extract_answer,
    load_task_rows,
    score_answer,
    task_prompt,
    task_to_messages,
    verifiable_reward,
)

ROW = {
    "id": "t1",
    "task": "add",
    "lang": "en",
    "instruction": "Add the two numbers.",
    "input": "3 + 4",
    "output": "3 + 4 = 7",
    "answer": "7",
}


def test_prompt_and_messages():
    assert task_prompt(ROW) == "Add the two numbers.\n3 + 4"
    assert task_prompt({**ROW, "input": ""}) == "Add the two numbers."
    assert task_to_messages(ROW) == [
        {"role": "user", "content": "Add the two numbers.\n3 + 4"},
        {"role": "assistant", "content": "3 + 4 = 7"},
    ]
    assert task_to_messages(ROW, system="S", with_answer=False) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": task_prompt(ROW)},
    ]


def test_load_task_rows_reads_the_held_out_file_with_its_schema(tmp_path):
    rows = load_task_rows(limit=5)
    assert len(rows) == 5 and all(set(TASK_SCHEMA) <= set(r) and r["task"] in TASK_TYPES for r in rows)
    assert rows == load_task_rows(DATA_DIR / "tasks_test.jsonl")[:5]
    bad = tmp_path / "tasks.jsonl"
    bad.write_text(
        '{"id": "x", "task": "add", "instruction": "Add.", "input": "1 + 1", "output": 2, "answer": "2"}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError, match=r"tasks\.jsonl:1.*output"):
        load_task_rows(bad)


def test_extract_answer_takes_the_result_not_the_restated_problem():
    assert extract_answer("add", "3 + 4 = 7") == "7"
    assert extract_answer("add", "3 + 4") == ""  # the problem restated without its result
    assert extract_answer("capital", "The capital of Torria is Saton.") == "Saton"


@pytest.mark.parametrize(
    "task,pred,answer,ok",
    [
        ("add", "12", "12", True),
        ("add", " Answer: 12\nbecause 7 + 5", "12", True),
        ("add", "The answer is 12.", "12", True),
        ("add", "答案：12", "12", True),
        ("add", "13", "12", False),
        ("add", "", "12", False),
        ("sub", "０", "0", True),
        ("first_letter", "A", "a", True),
        ("first_letter", "apple", "a", False),
        ("capital", "saton.", "Saton", True),
        ("capital", "Saton is the capital.", "Saton", True),
        ("capital", "萨顿。", "萨顿", True),
        ("capital", "Paris", "Saton", False),
        ("capital", "The capital of Torria is Saton.", "Saton", True),
        ("capital", "The capital of Torria is Paris.", "Saton", False),
        ("capital", "托里亚的首都是萨顿。", "萨顿", True),
        ("currency", "The currency of Torria is the Vosu mark.", "Vosu mark", True),
        ("currency", "托里亚的货币是沃苏马克。", "沃苏马克", True),
        ("currency", "The currency of Torria is the Vosu leaf.", "Vosu mark", False),
    ],
)
def test_score_answer_cases(task: str, pred: str, answer: str, ok: bool) -> None:
    assert score_answer(task, pred, answer) is ok


def test_score_answer_unknown_task() -> None:
    with pytest.raises(ValueError):
        score_answer("nope", "1", "1")


def test_verifiable_reward_scores_conversational_and_plain_completions():
    completions = [[{"role": "assistant", "content": "6"}], [{"role": "assistant", "content": "7"}], "F"]
    assert verifiable_reward(
        completions=completions, task=["add", "add", "first_letter"], answer=["6", "6", "f"], prompts=["p"] * 3
    ) == [1.0, 0.0, 1.0]
