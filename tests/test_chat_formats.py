"""Tests of course_utils.chat_formats: Alpaca, ShareGPT and messages rows to one form, and errors naming file, line and
field (the committed bad examples and hand-made ones)."""

from __future__ import annotations

import json

import pytest

from course_utils import DATA_DIR, PROJECT_ROOT, chat_formats, tasks
from course_utils.data import DataFormatError

SINGLE = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]


def test_bad_conversations_raise_with_file_line_field(tmp_path):
    with pytest.raises(DataFormatError) as info:
        chat_formats.load_sft_rows(DATA_DIR / "bad_examples" / "bad_roles.jsonl")
    assert info.value.line == 2 and info.value.field == "messages[1].role" and "unknown role 'bot'" in str(info.value)
    with pytest.raises(DataFormatError) as info:
        chat_formats.load_sft_rows(DATA_DIR / "bad_examples" / "no_assistant.jsonl")
    assert info.value.line == 1 and "no assistant turn" in str(info.value)
    rows, report = chat_formats.load_sft_rows(DATA_DIR / "bad_examples" / "bad_roles.jsonl", on_error="skip")
    assert report.rows_in == 5 and len(rows) == 2 and sum(report.dropped.values()) == 3
    rows, report = chat_formats.load_sft_rows(DATA_DIR / "bad_examples" / "no_assistant.jsonl", on_error="skip")
    assert len(rows) == 2 and report.dropped["no assistant turn (messages)"] == 3

    path = tmp_path / "types.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
        {"messages": "hello"},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
        {"instruction": "Add.", "input": "1 + 1", "output": 2},
    ]
    good = {"messages": SINGLE}
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n" + json.dumps(good) + "\n", encoding="utf-8")
    _, report = chat_formats.load_sft_rows(path, on_error="skip")
    assert report.rows_in == 6 and report.rows_out == 1
    expected = [(1, "messages[0].content"), (2, "messages"), (3, "conversations[1].from"), (4, "output")]
    for (line, field), row in zip(expected, lines):
        with pytest.raises(DataFormatError) as info:
            chat_formats.to_messages(row, path=path, line=line)
        assert info.value.line == line and info.value.field == field and str(path) in str(info.value)
    with pytest.raises(DataFormatError) as info:
        chat_formats.load_sft_rows(path)
    assert info.value.line == 1 and info.value.field == "messages[0].content"
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": SINGLE}) + "\n{broken\n")
    with pytest.raises(DataFormatError, match="invalid JSON") as info:
        chat_formats.load_sft_rows(broken)
    assert info.value.line == 2


def test_formats_convert_to_one_form():
    alpaca = {"instruction": "Add the numbers.", "input": "2 + 2", "output": "4", "system": "Be brief."}
    assert chat_formats.alpaca_to_messages(alpaca) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add the numbers.\n2 + 2"},
        {"role": "assistant", "content": "4"},
    ]
    assert chat_formats.alpaca_to_messages({"instruction": "Hi", "input": "", "output": "Hello"})[0]["content"] == "Hi"
    with_history = chat_formats.alpaca_to_messages({"instruction": "b?", "output": "B", "history": [["a?", "A"]]})
    assert [m["role"] for m in with_history] == ["user", "assistant", "user", "assistant"]
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    messages = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    assert chat_formats.to_messages(sharegpt) == chat_formats.to_messages(messages) == messages["messages"]
    assert chat_formats.detect_format(alpaca) == "alpaca"

    info = chat_formats.load_dataset_info(PROJECT_ROOT / "configs" / "dataset_info.json")
    rows, reports = chat_formats.load_named_datasets(
        "sharegpt_sample,sft_messages,tasks_train", PROJECT_ROOT / "configs" / "dataset_info.json", DATA_DIR, limit=5
    )
    assert len(rows) == 15 and all(r.rows_out == 5 for r in reports)
    assert {"tasks_train", "tasks_test", "sft_messages", "sharegpt_sample"} <= set(info)
    task_row = json.loads((DATA_DIR / "tasks_train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert chat_formats.to_messages(task_row, info["tasks_train"]) == tasks.task_to_messages(task_row)
