"""Unit tests of course_utils.cleaning: normalisation, PII, mojibake, rule filters, de-duplication, splitting, report."""

from __future__ import annotations

import pytest

from course_utils import cleaning


def test_normalize_text_nfkc_whitespace_and_cjk_punctuation():
    text = "\u3000Ｅｘ１\u00a0 a\u200b\r\nb\n\n\n\nc ，？ "
    assert cleaning.normalize_text(text) == "Ex1 a\nb\n\nc ，？"
    assert cleaning.normalize_text(text, keep_cjk_punctuation=False) == "Ex1 a\nb\n\nc ,?"


def test_redact_pii_emails_and_phones_but_not_numbers():
    text = "mail a.b@example.com.cn 或 zhang95@example.net，电话13800138000、177-4703-4651、+86 138 0013 8000、010-12345678、(555) 123-4567。1411年, id 12345678901234567890"
    redacted, count = cleaning.redact_pii(text)
    assert count == 7
    assert redacted.count("<EMAIL>") == 2 and redacted.count("<PHONE>") == 5
    assert "1411年" in redacted and "12345678901234567890" in redacted


def test_fix_mojibake_cp1252_gbk_and_clean():
    original = "鲁赞瓦尼亚的货币是尼达贝币。"
    sloppy = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in original.encode("utf-8"))
    assert cleaning.fix_mojibake(sloppy) == (original, "repaired")
    assert cleaning.fix_mojibake(original.encode("utf-8").decode("gbk", errors="replace"))[1] == "unrepairable"
    for clean in [original, "café naïve résumé", "The capital is Zokiport."]:
        assert cleaning.fix_mojibake(clean) == (clean, "ok")


def test_clean_example_counts():
    out = cleaning.clean_example({"instruction": " Ｈｉ ", "input": "", "output": "call 13800138000", "id": "x"})
    assert out["instruction"] == "Hi" and out["output"] == "call <PHONE>"
    assert out["n_redacted"] == 1 and out["n_repaired"] == 0 and out["unrepairable"] is False


def test_detect_language():
    assert [
        cleaning.detect_language(t)
        for t in ["你好，世界", "Hello world", "こんにちは", "안녕하세요", "Привет мир", "123"]
    ] == ["zh", "en", "ja", "ko", "ru", "other"]


ROWS = [
    {"id": "a", "instruction": "What is 2+2?", "input": "", "output": "2 + 2 = 4, of course."},
    {"id": "b", "instruction": "What is 2+2?", "input": "", "output": "ok"},  # too short
    {"id": "c", "instruction": "Win money", "input": "", "output": "Visit the CASINO today please"},  # banned
    {"id": "d", "instruction": "20たす40は？", "input": "", "output": "20たす40は60です。"},  # language
    {"id": "e", "instruction": "把下面的句子翻译成英文。", "input": "你好。", "output": "Hello there."},  # mixed, kept
    {"id": "f", "instruction": "what is 2+2?", "input": " ", "output": "2 + 2 =  4, of course."},  # exact dup of a
]


def test_apply_rules_counts_first_failed_rule():
    rules = [cleaning.rule_min_length("output", 5), cleaning.rule_no_banned_words(["casino"]), cleaning.rule_language()]
    kept, drops = cleaning.apply_rules(ROWS, rules)
    assert [r["id"] for r in kept] == ["a", "e", "f"]
    assert drops == {"output <= 5 chars": 1, "banned word": 1, "language not in en/zh": 1}


def test_exact_dedup_and_prompt_dedup():
    rows = [cleaning.clean_example(r) | {"id": r["id"]} for r in ROWS]
    kept, dropped = cleaning.exact_dedup(rows)
    assert dropped == 1 and "f" not in [r["id"] for r in kept]
    kept, dropped = cleaning.exact_dedup(kept, fields=("instruction", "input"))
    assert dropped == 1 and [r["id"] for r in kept] == ["a", "c", "d", "e"]
    assert cleaning.text_hash("A  b") == cleaning.text_hash("a b") != cleaning.text_hash("a c")


def test_jaccard_and_minhash_estimate():
    a = "温多尔使用什么货币？温多尔的货币是赞多杜卡特。"
    b = "温多尔使用什么货币？温多尔的货币为赞多杜卡特。"
    exact = cleaning.jaccard(a, b, n=3)
    estimate = cleaning.minhash(a, num_perm=256, n=3).jaccard(cleaning.minhash(b, num_perm=256, n=3))
    assert 0.5 < exact < 1 and abs(exact - estimate) < 0.1
    assert cleaning.jaccard(a, a) == 1.0


def test_near_dedup_drops_near_copies_only():
    base = (
        "How do I make smoked dumplings? 1. Heat some oil in a pan. 2. Add a pinch of salt. 3. Cook it for 30 minutes."
    )
    rows = [
        {"instruction": base, "input": "", "output": "Serve it while it is hot."},
        {"instruction": "Name the capital of Toporia.", "input": "", "output": "Zokiport is the capital."},
        {"instruction": base, "input": "", "output": "Serve it while it is hot!"},
    ]
    kept, pairs = cleaning.near_dedup(rows, threshold=0.8, n=3)
    assert len(kept) == 2 and [(p[0], p[1]) for p in pairs] == [(2, 0)] and pairs[0][2] >= 0.8


def test_length_bucket_counts_characters():
    assert cleaning.length_bucket(len("托波里亚的首都是哪里？" * 3)) == "short"
    assert [cleaning.length_bucket(n) for n in (0, 63, 64, 255, 256)] == ["short", "short", "medium", "medium", "long"]


def test_stratified_split_is_seeded_and_stratified():
    datasets = pytest.importorskip("datasets")
    rows = {
        "id": [str(i) for i in range(200)],
        "category": ["math" if i % 4 else "story" for i in range(200)],
        "len_bucket": ["short" if i % 2 else "long" for i in range(200)],
    }
    rows["category"][0] = "lonely"  # strata of one row: merged into "rare"
    rows["category"][1] = "alone"
    ds = datasets.Dataset.from_dict(rows)
    split, strata = cleaning.stratified_split(ds, test_size=0.1, seed=0)
    assert "rare" in strata and sum(strata.values()) == 200
    assert type(split["train"].features["stratum"]).__name__ == "ClassLabel"
    again, _ = cleaning.stratified_split(ds, test_size=0.1, seed=0)
    assert again["test"]["id"] == split["test"]["id"] and len(split["test"]) == 20
    names = split["test"].features["stratum"].names
    from collections import Counter

    counts = Counter(names[i] for i in split["test"]["stratum"])
    for stratum, size in strata.items():
        assert abs(counts[stratum] - 0.1 * size) <= 1


def test_data_report_table_and_plot():
    report = cleaning.DataReport(rows_in=10, lengths_before=[1, 2, 3], lengths_after=[2, 3])
    report.add("too short", 3)
    report.add("exact duplicate", 2)
    assert report.rows_out == 5 and report.dropped_by("exact") == 2
    assert "rows out" in report.table() and "- too short" in str(report)
    import matplotlib

    matplotlib.use("Agg")
    fig = report.plot_lengths(bins=5)
    assert len(fig.axes) == 1
