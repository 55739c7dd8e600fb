"""Unit tests of course_utils.data: strict JSONL reading with errors that name file, line and field; packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils import data

SCHEMA = {"instruction": str, "input": str, "output": str}


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            handle.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


def row(**fields) -> str:
    base = {"instruction": "Say hi.", "input": "", "output": "Hello there!"}
    base.update(fields)
    return json.dumps(base, ensure_ascii=False)


@pytest.mark.parametrize(
    "bad_line, field, words",
    [
        ('{"instruction": "a", "input": "", "output": "b"', None, "invalid JSON"),
        (json.dumps({"instruction": "a", "input": ""}), "output", "missing field"),
        (json.dumps({"instruction": "a", "input": "", "output": 3}), "output", "expected str, got int"),
        (json.dumps({"instruction": None, "input": "", "output": "b"}), "instruction", "got NoneType"),
        (json.dumps({"instruction": "a", "input": "", "output": "   "}), "output", "empty string"),
        (b'{"instruction": "a", "input": "", "output": "\xff\xfe"}', None, "not UTF-8"),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_read_jsonl_raises_with_file_line_field(tmp_path, bad_line, field, words):
    path = write_lines(tmp_path / "bad.jsonl", [row(), bad_line, row()])
    with pytest.raises(data.DataFormatError) as info:
        data.read_jsonl(path, SCHEMA, allow_empty=["input"])
    error = info.value
    assert error.path.endswith("bad.jsonl") and error.line == 2 and error.field == field
    assert words in str(error) and "bad.jsonl:2" in str(error)


def test_read_jsonl_gbk_line_is_not_utf8(tmp_path):
    path = write_lines(tmp_path / "gbk.jsonl", [row(), row(output="你好世界").encode("gbk")])
    with pytest.raises(data.DataFormatError, match=r"gbk.jsonl:2: not UTF-8"):
        data.read_jsonl(path, SCHEMA, allow_empty=["input"])


def test_read_jsonl_skip_counts_each_reason(tmp_path):
    lines = [row(), "{broken", json.dumps({"instruction": "a", "input": ""}), row(output=""), b"\xff", "", row()]
    rows, report = data.read_jsonl(
        write_lines(tmp_path / "mixed.jsonl", lines), SCHEMA, on_error="skip", allow_empty=["input"]
    )
    assert len(rows) == 2 and report.rows_in == 6 and report.rows_out == 2  # the blank line is not a row
    assert report.dropped == {
        "invalid JSON": 1,
        "missing field (output)": 1,
        "empty string (output)": 1,
        "not UTF-8": 1,
    }
    assert "mixed.jsonl: 6 rows in, 2 kept, 4 dropped" in str(report)


def test_read_jsonl_rejects_unknown_mode(tmp_path):
    with pytest.raises(ValueError):
        data.read_jsonl(write_lines(tmp_path / "x.jsonl", [row()]), SCHEMA, on_error="ignore")


def test_write_then_read_roundtrip(tmp_path):
    rows = [{"instruction": "翻译", "input": "你好", "output": "Hello"}]
    path = data.write_jsonl(rows, tmp_path / "out" / "rows.jsonl")
    assert "你好" in path.read_text(encoding="utf-8")
    assert data.read_jsonl(path, SCHEMA)[0] == rows


def test_group_texts_blocks_and_labels():
    out = data.group_texts({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]}, block_size=3)
    assert out["input_ids"] == [[1, 2, 3], [4, 5, 6]] and out["labels"] == out["input_ids"]


def test_split_documents_keeps_every_copy_of_a_text_on_one_side():
    import datasets

    texts = [f"doc {i % 30}" for i in range(60)]  # every text twice
    ds = datasets.Dataset.from_dict({"text": texts, "n": list(range(60))})
    parts = data.split_documents(ds, test_size=0.2, seed=1)
    train, test = set(parts["train"]["text"]), set(parts["test"]["text"])
    assert not train & test and len(test) == 6 and len(parts["train"]) + len(parts["test"]) == 60
    assert sorted(list(parts["train"]["n"]) + list(parts["test"]["n"])) == list(range(60))
    assert list(data.split_documents(ds, test_size=0.2, seed=1)["test"]["n"]) == list(parts["test"]["n"])  # seeded
    with pytest.raises(ValueError, match="fraction"):
        data.split_documents(ds, test_size=5)
