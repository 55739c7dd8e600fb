"""Unit tests of course_utils.data: strict JSONL reading, cleaning, filters, de-duplication, conversion, split."""

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


# --- read_jsonl: errors name file, line and field --------------------------------------------------------------

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
    rows, report = data.read_jsonl(write_lines(tmp_path / "mixed.jsonl", lines), SCHEMA, on_error="skip",
                                   allow_empty=["input"])
    assert len(rows) == 2 and report.rows_in == 6 and report.rows_out == 2  # the blank line is not a row
    assert report.dropped == {"invalid JSON": 1, "missing field (output)": 1, "empty string (output)": 1, "not UTF-8": 1}
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


# --- cleaning ----------------------------------------------------------------------------------------------------

def test_normalize_text_nfkc_whitespace_and_cjk_punctuation():
    text = "\u3000Ｅｘ１\u00a0 a\u200b\r\nb\n\n\n\nc ，？ "
    assert data.normalize_text(text) == "Ex1 a\nb\n\nc ，？"
    assert data.normalize_text(text, keep_cjk_punctuation=False) == "Ex1 a\nb\n\nc ,?"


def test_redact_pii_emails_and_phones_but_not_numbers():
    text = "mail a.b@example.com.cn 或 zhang95@example.net，电话13800138000、177-4703-4651、+86 138 0013 8000、010-12345678、(555) 123-4567。1411年, id 12345678901234567890"
    redacted, count = data.redact_pii(text)
    assert count == 7
    assert redacted.count("<EMAIL>") == 2 and redacted.count("<PHONE>") == 5
    assert "1411年" in redacted and "12345678901234567890" in redacted


def test_fix_mojibake_cp1252_gbk_and_clean():
    original = "鲁赞瓦尼亚的货币是尼达贝币。"
    sloppy = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in original.encode("utf-8"))
    assert data.fix_mojibake(sloppy) == (original, "repaired")
    assert data.fix_mojibake(original.encode("utf-8").decode("gbk", errors="replace"))[1] == "unrepairable"
    for clean in [original, "café naïve résumé", "The capital is Zokiport."]:
        assert data.fix_mojibake(clean) == (clean, "ok")


def test_clean_example_counts():
    out = data.clean_example({"instruction": " Ｈｉ ", "input": "", "output": "call 13800138000", "id": "x"})
    assert out["instruction"] == "Hi" and out["output"] == "call <PHONE>"
    assert out["n_redacted"] == 1 and out["n_repaired"] == 0 and out["unrepairable"] is False


def test_detect_language():
    assert [data.detect_language(t) for t in ["你好，世界", "Hello world", "こんにちは", "안녕하세요", "Привет мир", "123"]] == [
        "zh", "en", "ja", "ko", "ru", "other"]


# --- rules and de-duplication ------------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "instruction": "What is 2+2?", "input": "", "output": "2 + 2 = 4, of course."},
    {"id": "b", "instruction": "What is 2+2?", "input": "", "output": "ok"},                         # too short
    {"id": "c", "instruction": "Win money", "input": "", "output": "Visit the CASINO today please"},  # banned
    {"id": "d", "instruction": "20たす40は？", "input": "", "output": "20たす40は60です。"},              # language
    {"id": "e", "instruction": "把下面的句子翻译成英文。", "input": "你好。", "output": "Hello there."},  # mixed, kept
    {"id": "f", "instruction": "what is 2+2?", "input": " ", "output": "2 + 2 =  4, of course."},      # exact dup of a
]


def test_apply_rules_counts_first_failed_rule():
    rules = [data.rule_min_length("output", 5), data.rule_no_banned_words(["casino"]), data.rule_language()]
    kept, drops = data.apply_rules(ROWS, rules)
    assert [r["id"] for r in kept] == ["a", "e", "f"]
    assert drops == {"output <= 5 chars": 1, "banned word": 1, "language not in en/zh": 1}


def test_exact_dedup_and_prompt_dedup():
    rows = [data.clean_example(r) | {"id": r["id"]} for r in ROWS]
    kept, dropped = data.exact_dedup(rows)
    assert dropped == 1 and "f" not in [r["id"] for r in kept]
    kept, dropped = data.exact_dedup(kept, fields=("instruction", "input"))
    assert dropped == 1 and [r["id"] for r in kept] == ["a", "c", "d", "e"]
    assert data.text_hash("A  b") == data.text_hash("a b") != data.text_hash("a c")


def test_jaccard_and_minhash_estimate():
    a = "温多尔使用什么货币？温多尔的货币是赞多杜卡特。"
    b = "温多尔使用什么货币？温多尔的货币为赞多杜卡特。"
    exact = data.jaccard(a, b, n=3)
    estimate = data.minhash(a, num_perm=256, n=3).jaccard(data.minhash(b, num_perm=256, n=3))
    assert 0.5 < exact < 1 and abs(exact - estimate) < 0.1
    assert data.jaccard(a, a) == 1.0


def test_near_dedup_drops_near_copies_only():
    base = "How do I make smoked dumplings? 1. Heat some oil in a pan. 2. Add a pinch of salt. 3. Cook it for 30 minutes."
    rows = [
        {"instruction": base, "input": "", "output": "Serve it while it is hot."},
        {"instruction": "Name the capital of Toporia.", "input": "", "output": "Zokiport is the capital."},
        {"instruction": base, "input": "", "output": "Serve it while it is hot!"},
    ]
    kept, pairs = data.near_dedup(rows, threshold=0.8, n=3)
    assert len(kept) == 2 and [(p[0], p[1]) for p in pairs] == [(2, 0)] and pairs[0][2] >= 0.8


# --- split and report ----------------------------------------------------------------------------------------------

def test_length_bucket_counts_characters():
    assert data.length_bucket(len("托波里亚的首都是哪里？" * 3)) == "short"
    assert [data.length_bucket(n) for n in (0, 63, 64, 255, 256)] == ["short", "short", "medium", "medium", "long"]


def test_stratified_split_is_seeded_and_stratified():
    datasets = pytest.importorskip("datasets")
    rows = {"id": [str(i) for i in range(200)],
            "category": ["math" if i % 4 else "story" for i in range(200)],
            "len_bucket": ["short" if i % 2 else "long" for i in range(200)]}
    rows["category"][0] = "lonely"  # strata of one row: merged into "rare"
    rows["category"][1] = "alone"
    ds = datasets.Dataset.from_dict(rows)
    split, strata = data.stratified_split(ds, test_size=0.1, seed=0)
    assert "rare" in strata and sum(strata.values()) == 200
    assert type(split["train"].features["stratum"]).__name__ == "ClassLabel"
    again, _ = data.stratified_split(ds, test_size=0.1, seed=0)
    assert again["test"]["id"] == split["test"]["id"] and len(split["test"]) == 20
    names = split["test"].features["stratum"].names
    from collections import Counter
    counts = Counter(names[i] for i in split["test"]["stratum"])
    for stratum, size in strata.items():
        assert abs(counts[stratum] - 0.1 * size) <= 1


def test_data_report_table_and_plot():
    report = data.DataReport(rows_in=10, lengths_before=[1, 2, 3], lengths_after=[2, 3])
    report.add("too short", 3)
    report.add("exact duplicate", 2)
    assert report.rows_out == 5 and report.dropped_by("exact") == 2
    assert "rows out" in report.table() and "- too short" in str(report)
    import matplotlib

    matplotlib.use("Agg")
    fig = report.plot_lengths(bins=5)
    assert len(fig.axes) == 1


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
