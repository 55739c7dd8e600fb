"""``bad_examples/*.jsonl``: small files with known broken lines, for the error-handling lesson (``data.read_jsonl``
must name the file, line and field of each)."""

from __future__ import annotations

from typing import Any

from course_utils.datagen.world import dumps

#: bad_examples file -> 1-based line numbers that are broken (all other lines are valid).
# fmt: off
BAD_EXAMPLES: dict[str, dict[str, Any]] = {
    "broken_line.jsonl": {"format": "alpaca", "bad_lines": [3],
                          "problem": "line 3 is not valid JSON (missing closing brace)"},
    "missing_field.jsonl": {"format": "alpaca", "bad_lines": [2, 4],
                            "problem": "line 2 lacks 'output', line 4 lacks 'instruction'"},
    "wrong_type.jsonl": {"format": "alpaca", "bad_lines": [1, 3, 4],
                         "problem": "output is an int (1), a list (3); instruction is null (4)"},
    "empty_field.jsonl": {"format": "alpaca", "bad_lines": [2, 3, 5],
                          "problem": "empty output (2), whitespace-only instruction (3), empty output (5)"},
    "non_utf8.jsonl": {"format": "alpaca", "bad_lines": [2, 4],
                       "problem": "line 2 contains raw bytes 0xFF 0xFE, line 4 is GBK-encoded Chinese"},
    "bad_roles.jsonl": {"format": "messages", "bad_lines": [2, 3, 5],
                        "problem": "unknown role 'bot' (2), role 'Human' with wrong case (3), message without role (5)"},
    "no_assistant.jsonl": {"format": "messages", "bad_lines": [1, 3, 4],
                           "problem": "no assistant turn (1, 4); conversation ends with a user turn and has none (3)"},
}
# fmt: on


def bad_example_bytes() -> dict[str, bytes]:
    def j(obj: Any) -> bytes:
        return (dumps(obj) + "\n").encode("utf-8")

    def a(ins: str, inp: str, out: Any) -> dict[str, Any]:
        return {"instruction": ins, "input": inp, "output": out}

    ok1 = a("Add the two numbers. Answer with the number only.", "3 + 4", "7")
    ok2 = a("把这个英文单词改成大写。", "apple", "APPLE")
    ok3 = a("Translate the following sentence into Chinese.", "Good morning.", "早上好。")
    files: dict[str, bytes] = {}
    files["broken_line.jsonl"] = (
        j(ok1)
        + j(ok2)
        + b'{"instruction": "Give the first letter of this word.", "input": "river", "output": "r"\n'
        + j(ok3)
        + j(a("计算两个数的差，只回答数字。", "9 - 5", "4"))
    )
    files["missing_field.jsonl"] = (
        j(ok1)
        + j({"instruction": "Convert the word to uppercase.", "input": "moon"})
        + j(ok2)
        + j({"input": "12 + 5", "output": "17"})
        + j(ok3)
    )
    files["wrong_type.jsonl"] = (
        j(a("Add the two numbers.", "5 + 7", 12))
        + j(ok2)
        + j(a("List two colours.", "", ["red", "blue"]))
        + j({"instruction": None, "input": "sun", "output": "SUN"})
        + j(ok3)
    )
    files["empty_field.jsonl"] = (
        j(ok1)
        + j(a("Write the word in capital letters.", "star", ""))
        + j(a("   ", "lake", "LAKE"))
        + j(ok2)
        + j(a("解释一下什么是学习率。", "", ""))
    )
    files["non_utf8.jsonl"] = (
        j(ok1)
        + b'{"instruction": "Convert the word to uppercase.", "input": "tree", "output": "TR\xff\xfeEE"}\n'
        + j(ok2)
        + '{"instruction": "翻译成英文。", "input": "你好", "output": "Hello"}\n'.encode("gbk")
    )

    def m(*pairs: tuple[str | None, str]) -> dict[str, Any]:
        msgs = [({"role": r, "content": c} if r is not None else {"content": c}) for r, c in pairs]
        return {"messages": msgs}

    good1 = m(("system", "You are a helpful assistant."), ("user", "What is 2 + 3?"), ("assistant", "5"))
    good2 = m(("user", "把这个英文单词改成大写。\ncat"), ("assistant", "CAT"))
    files["bad_roles.jsonl"] = (
        j(good1)
        + j(m(("user", "Hi!"), ("bot", "Hello! How can I help?")))
        + j(m(("Human", "What is 4 + 4?"), ("assistant", "8")))
        + j(good2)
        + j(m(("user", "Name a colour."), (None, "Blue.")))
    )
    files["no_assistant.jsonl"] = (
        j(m(("system", "You are a helpful assistant."), ("user", "What is 6 + 1?")))
        + j(good2)
        + j(m(("user", "Hello"), ("user", "Are you there?")))
        + j(m(("system", "你是一个乐于助人的助手。")))
        + j(good1)
    )
    return files
