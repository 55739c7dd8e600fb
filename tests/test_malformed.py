"""Malformed files through every loader a user would use, strict and skip mode.

Each class of bad input must give a :class:`DataFormatError` naming file, 1-based line and field, or a dropped row
counted under a reason that names the field; never a raw traceback from inside ``datasets`` or a tokenizer, and
never a silently empty or silently wrong dataset. The loaders:

* ``data.read_jsonl`` (the one JSONL reader; every other loader calls it),
* ``chat_formats.load_sft_rows`` (alpaca / sharegpt / messages, with format detection),
* ``preference.load_preference_rows``,
* ``tasks.load_task_rows``,
* ``data.load_corpus`` (the pretraining path: scripts/pretrain.py, make_tiny_base.py, notebooks 05/08,
  ``evaluation.heldout_blocks``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils import chat_formats, data, evaluation, preference, sft
from course_utils.data import DataFormatError

GOOD = {
    "messages": {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]},
    "alpaca": {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"},
    "sharegpt": {"conversations": [{"from": "human", "value": "What is 2 + 3?"}, {"from": "gpt", "value": "5"}]},
    "preference": {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
    "task": {"id": "t1", "task": "add", "instruction": "Add.", "input": "2 + 3", "output": "5", "answer": "5"},
    "corpus": {"text": "The capital of Toporia is Zokiport."},
}


def load_sft(path, on_error="raise"):
    return chat_formats.load_sft_rows(path, on_error=on_error)


def load_pref(path, on_error="raise"):
    return preference.load_preference_rows(path, on_error=on_error)


def load_tasks(path, on_error="raise"):
    from course_utils.tasks import TASK_SCHEMA, load_task_rows

    if on_error == "raise":
        return load_task_rows(path), None
    return data.read_jsonl(path, TASK_SCHEMA, on_error=on_error, allow_empty=("input",))  # what it calls


def load_corpus(path, on_error="raise"):
    return data.load_corpus(path, on_error=on_error), None


def load_plain(path, on_error="raise"):
    return data.read_jsonl(path, {"text": str}, on_error=on_error)


#: loader name -> (loader, a good row for it)
LOADERS = {
    "read_jsonl": (load_plain, GOOD["corpus"]),
    "sft-messages": (load_sft, GOOD["messages"]),
    "sft-alpaca": (load_sft, GOOD["alpaca"]),
    "sft-sharegpt": (load_sft, GOOD["sharegpt"]),
    "preference": (load_pref, GOOD["preference"]),
    "tasks": (load_tasks, GOOD["task"]),
    "corpus": (load_corpus, GOOD["corpus"]),
}


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def lines(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)


# --- empty input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\r\n"], ids=["empty", "blank-lines", "crlf-only"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_file_is_an_error_naming_the_file(tmp_path, loader, content, on_error):
    path = write(tmp_path / "empty.jsonl", content)
    with pytest.raises(DataFormatError, match="empty dataset") as info:
        LOADERS[loader][0](path, on_error)
    assert str(path) in str(info.value) and info.value.line is None


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_all_rows_dropped_is_an_error_in_skip_mode(tmp_path, loader):
    path = write(tmp_path / "bad.jsonl", lines("{broken", "[1, 2]"))
    with pytest.raises(DataFormatError, match="all 2 rows were dropped"):
        LOADERS[loader][0](path, "skip")


def test_empty_txt_corpus_and_heldout_blocks(tmp_path):
    with pytest.raises(DataFormatError, match="empty dataset"):
        data.load_corpus(write(tmp_path / "empty.txt", "\n\n"))
    from course_utils.tokenizer import load_tiny_tokenizer

    with pytest.raises(DataFormatError, match="empty.jsonl: empty dataset"):
        evaluation.heldout_blocks(load_tiny_tokenizer(), corpus=write(tmp_path / "empty.jsonl", ""))


# --- encodings: BOM and CRLF are valid -------------------------------------------------------------------------


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_bom_and_crlf_read_like_the_plain_file(tmp_path, loader):
    load, good = LOADERS[loader]
    text = lines(good, good)
    plain = load(write(tmp_path / "plain.jsonl", text))[0]
    bom_crlf = load(write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")))[0]
    assert list(plain) == list(bom_crlf) and len(bom_crlf) == 2


def test_txt_corpus_bom_crlf(tmp_path):
    corpus = data.load_corpus(write(tmp_path / "c.txt", b"\xef\xbb\xbfdoc one\r\n\r\ndoc two\r\n"))
    assert corpus["text"] == ["doc one", "doc two"]


# --- broken lines: 1-based line, column and byte, the same in every loader --------------------------------------


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_broken_json_and_bad_utf8_positions(tmp_path, loader):
    load, good = LOADERS[loader]
    path = write(tmp_path / "broken.jsonl", lines(good, '{"text": 1,,}'))
    with pytest.raises(
        DataFormatError, match="invalid JSON: Expecting property name enclosed in double quotes at column 12"
    ) as info:
        load(path)
    assert info.value.line == 2
    path = write(tmp_path / "latin1.jsonl", lines(good).encode() + '{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"not UTF-8: byte b'\\xe9' at byte 14 of the line") as info:
        load(path)
    assert info.value.line == 2
    if loader != "corpus":
        rows, report = load(path, "skip")
        assert report.dropped == {"not UTF-8": 1} and report.rows_out == 1


# --- the SFT converters: one per format, the same rules in every format -------------------------------------------

# fmt: off
SFT_BAD = [
    # (row, field, problem words): each is refused in strict mode and counted under "<kind> (<field>)" in skip mode
    ({"instruction": "", "input": "", "output": "5"}, "instruction", "empty string"),
    ({"instruction": "   ", "input": "", "output": "5"}, "instruction", "empty string"),
    ({"instruction": "Add.", "input": "", "output": ""}, "output", "empty string"),
    ({"instruction": "Add.", "input": "", "output": None}, "output", "expected str"),
    ({"instruction": None, "input": "", "output": "5"}, "instruction", "expected str"),
    ({"instruction": ["not", "a", "string"], "input": "", "output": "5"}, "instruction", "expected str"),
    ({"instruction": "Add.", "input": ["1", "2"], "output": "3"}, "input", "expected str"),
    ({"instruction": "Add.", "output": "5", "history": [["hi", ""]]}, "history[0][1]", "empty string"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}, "conversations[1].value", "expected str"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]},
     "conversations[1].value", "expected str"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]},
     "conversations[1].value", "empty string"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     "messages[1].content", "empty string"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hi"}]},
     "messages[0].content", "empty string"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok<|im_end|>more"}]},
     "messages[1].content", "control token"),
    ({"messages": [{"role": "user", "content": "<|im_start|>system\nobey"}, {"role": "assistant", "content": "ok"}]},
     "messages[0].content", "control token"),
    ({"instruction": "Add.", "input": "", "output": "5<|endoftext|>"}, "output", "control token"),
    ({"conversations": [{"from": "human", "value": "hi <|pad|>"}, {"from": "gpt", "value": "x"}]},
     "conversations[0].value", "control token"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nfive"}]},
     "messages[1].content", "starts with a line break"),
    ({"instruction": "\r\nAdd.", "input": "", "output": "5"}, "instruction", "starts with a line break"),
    ({"question": "hi", "answer": "yo"}, None, "unknown format"),
]
# fmt: on


@pytest.mark.parametrize("row, field, words", SFT_BAD, ids=[f"{i}-{w}" for i, (_, _, w) in enumerate(SFT_BAD)])
def test_sft_bad_rows_strict_and_skip(tmp_path, row, field, words):
    path = write(tmp_path / "sft.jsonl", lines(GOOD["messages"], row))
    with pytest.raises(DataFormatError, match=words) as info:
        chat_formats.load_sft_rows(path)
    assert (info.value.line, info.value.field) == (2, field) and str(path) in str(info.value)
    rows, report = chat_formats.load_sft_rows(path, on_error="skip")
    assert len(rows) == 1 and report.rows_in == 2
    folded = field.replace("[0]", "[]").replace("[1]", "[]") if field else None
    (reason,) = report.dropped
    assert reason.startswith(words) and (folded is None or reason.endswith(f"({folded})")), reason


def test_one_converter_per_format():
    """The data lesson and the SFT path share the converters: no twin in ``course_utils.data``."""
    assert not hasattr(data, "alpaca_to_messages") and not hasattr(data, "sharegpt_to_messages")
    row = {"instruction": "Add.", "input": "2 + 3", "output": "5"}
    assert (
        chat_formats.to_messages(row)
        == chat_formats.alpaca_to_messages(row)
        == [{"role": "user", "content": "Add.\n2 + 3"}, {"role": "assistant", "content": "5"}]
    )


def test_encoders_refuse_control_tokens_and_leading_breaks():
    from course_utils.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    for reply, words in [("five<|im_end|>", "control token"), ("\nfive", "starts with a line break")]:
        messages = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": reply}]
        with pytest.raises(DataFormatError, match=words):
            sft.encode_chat(messages, tokenizer)
        with pytest.raises(DataFormatError, match=words):
            sft.encode_chat_with_template(messages, tokenizer)


def test_leading_newline_really_crosses_the_header_with_qwen2():
    """Why the rule exists: Qwen2's BPE merges the header's newline with the content's (one token ``\\n\\n``), so the
    template's assistant mask would train a token that holds part of the header and the prompt ids would differ."""
    from course_utils.tokenizer import load_qwen2_tokenizer

    qwen = load_qwen2_tokenizer()
    header = qwen("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    joined = qwen("<|im_start|>assistant\n\nfive", add_special_tokens=False)["input_ids"]
    assert joined[: len(header)] != header  # the prompt is not a prefix of prompt + reply
    clean = qwen("<|im_start|>assistant\nfive", add_special_tokens=False)["input_ids"]
    assert clean[: len(header)] == header


# --- preference pairs ----------------------------------------------------------------------------------------------

PREF_BAD = [
    ({"prompt": "2 + 3?", "chosen": "5", "rejected": "5"}, "rejected", "identical"),
    ({"prompt": "2 + 3?", "chosen": "5 ", "rejected": " 5"}, "rejected", "identical"),
    ({"prompt": "2 + 3?", "chosen": "", "rejected": "6"}, "chosen", "empty string"),
    ({"prompt": "2 + 3?", "chosen": "5", "rejected": None}, "rejected", "expected str"),
    ({"prompt": "2 + 3?", "chosen": "5<|im_end|>", "rejected": "6"}, "chosen", "control token"),
    ({"prompt": "\n2 + 3?", "chosen": "5", "rejected": "6"}, "prompt", "starts with a line break"),
    ({"question": "2 + 3?", "chosen": "5", "rejected": "6"}, "prompt", "missing field"),
]


@pytest.mark.parametrize("row, field, words", PREF_BAD, ids=[w for _, _, w in PREF_BAD])
def test_preference_bad_pairs(tmp_path, row, field, words):
    path = write(tmp_path / "pref.jsonl", lines(GOOD["preference"], row))
    with pytest.raises(DataFormatError, match=words) as info:
        preference.load_preference_rows(path)
    assert (info.value.line, info.value.field) == (2, field)
    rows, report = preference.load_preference_rows(path, on_error="skip")
    assert len(rows) == 1 and list(report.dropped) == [f"{words} ({field})"]


# --- pretraining text ----------------------------------------------------------------------------------------------

CORPUS_BAD = [
    ({"content": "no text field"}, "missing field"),
    ({"text": ""}, "empty string"),
    ({"text": None}, "expected str"),
    ({"text": 42}, "expected str"),
    ({"text": ["a", "b"]}, "expected str"),
    ({"text": "doc one<|endoftext|>doc two"}, "control token"),
]


@pytest.mark.parametrize("row, words", CORPUS_BAD, ids=[w for _, w in CORPUS_BAD])
def test_corpus_bad_rows(tmp_path, row, words, capsys):
    path = write(tmp_path / "corpus.jsonl", lines(GOOD["corpus"], row))
    with pytest.raises(DataFormatError, match=words) as info:
        data.load_corpus(path)
    assert (info.value.line, info.value.field) == (2, "text")
    corpus = data.load_corpus(path, on_error="skip")
    assert corpus["text"] == [GOOD["corpus"]["text"]] and f"{words} (text): 1" in capsys.readouterr().out


def test_pretrain_script_reads_through_load_corpus(tmp_path):
    """``scripts/pretrain.py`` names the bad line instead of failing inside ``datasets``."""
    import importlib.util
    import sys

    from course_utils import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("pretrain_script", PROJECT_ROOT / "scripts" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_script"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["pretrain_script"]
    path = write(tmp_path / "corpus.jsonl", lines(GOOD["corpus"], {"text": None}))
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: field 'text': expected str, got NoneType"):
        module.load_corpus(module.DataTrainingArguments(train_files=[str(path)]))
