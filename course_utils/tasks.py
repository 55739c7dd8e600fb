"""The checkable tasks, in one place (nanochat's ``tasks/``): what a task row looks like, the prompt a model sees, the
gold reply, how an answer is extracted and scored, and the 0/1 reward GRPO maximises.

Everything that asks "did the model get it right?" uses this module: SFT accuracy (``sft.score_tasks``), the
verifiable reward of GRPO (:func:`verifiable_reward`, ``preference.sampled_reward``), the evaluation report
(``evaluation``) and the generator that writes ``tasks_{train,test}.jsonl`` and the preference pairs
(``course_utils.datagen``: every gold reply is accepted, every rejected reply refused). Standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from course_utils import DATA_DIR
from course_utils.chat_formats import alpaca_prompt
from course_utils.data import read_jsonl

__all__ = [
    "FACT_REPLY",
    "TASK_SCHEMA",
    "TASK_TYPES",
    "extract_answer",
    "load_task_rows",
    "score_answer",
    "task_prompt",
    "task_to_messages",
    "verifiable_reward",
]

#: The checkable task types (small, closed answer spaces).
TASK_TYPES: tuple[str, ...] = ("add", "sub", "first_letter", "capital", "currency")
#: ``data.read_jsonl`` schema of ``tasks_{train,test}.jsonl`` (``input`` may be empty).
TASK_SCHEMA: dict[str, type] = {"id": str, "task": str, "instruction": str, "input": str, "output": str, "answer": str}


# ----------------------------------------------------------------------------------------------- the prompt
def task_prompt(row: Mapping[str, Any]) -> str:
    """User-facing prompt of a task row: instruction, then input on a new line if present (a task row is an Alpaca
    row: ``chat_formats.alpaca_prompt``)."""
    return alpaca_prompt(row["instruction"], row.get("input"))


def task_to_messages(
    row: Mapping[str, Any], system: str | None = None, with_answer: bool = True
) -> list[dict[str, str]]:
    """A checkable-task row (``instruction``, ``input``, ``output``) as a chat; without the answer for generation."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": task_prompt(row)})
    if with_answer:
        messages.append({"role": "assistant", "content": row["output"]})
    return messages


def load_task_rows(
    path: str | Path | None = None, limit: int | None = None, on_error: str = "raise"
) -> list[dict[str, Any]]:
    """Checkable-task rows (:data:`TASK_SCHEMA`; ``data_samples/tasks_test.jsonl`` by default: tasks never seen
    in training), optionally the first ``limit``, read with :func:`course_utils.data.read_jsonl`."""
    path = Path(path) if path is not None else DATA_DIR / "tasks_test.jsonl"
    rows, _ = read_jsonl(path, TASK_SCHEMA, on_error=on_error, allow_empty=("input",), limit=limit)
    return rows


# ------------------------------------------------------------------------------------ the answer and its score
#: Gold replies of the fact tasks: the corpus' own sentence, so the model answers along the route it learned the
#: fact by (``The capital of X is`` -> Y) instead of a new country -> city table fitted in SFT.
FACT_REPLY: dict[str, dict[str, str]] = {
    "capital": {"en": "The capital of {name} is {capital}.", "zh": "{name}的首都是{capital}。"},
    "currency": {"en": "The currency of {name} is the {currency}.", "zh": "{name}的货币是{currency}。"},
}
_FACT_REPLY_RE = {
    "capital": re.compile(r"^(?:the capital of .+? is |.+?的首都是)", re.IGNORECASE),
    "currency": re.compile(r"^(?:the currency of .+? is (?:the )?|.+?的货币是)", re.IGNORECASE),
}
_PREFIX_RE = re.compile(r"^(?:the answer is|answer|final answer|答案是|答案|答)\s*[:：]?\s*", re.IGNORECASE)
_PUNCT = " \t.。!！?？,，;；:：'\"“”‘’()（）[]【】"


def extract_answer(task: str, prediction: str) -> str:
    """Extract the answer string from a model output (first non-empty line, prefixes stripped)."""
    if task not in TASK_TYPES:
        raise ValueError(f"unknown task {task!r}")
    line = next((ln for ln in prediction.splitlines() if ln.strip()), "")
    line = unicodedata.normalize("NFKC", line).strip()
    line = _PREFIX_RE.sub("", line).strip()
    if task in ("add", "sub"):  # "3 + 4 = 7" -> the number after the last "="; otherwise the first number
        if "=" not in line and re.match(r"-?\d+\s*[-+]\s*\d+", line):
            return ""  # the problem restated without its result
        m = re.search(r"-?\d+", line.rsplit("=", 1)[-1] if "=" in line else line)
        return str(int(m.group(0))) if m else ""
    if task in FACT_REPLY:  # a restated reply ("The capital of X is Y.") -> "Y"
        line = _FACT_REPLY_RE[task].sub("", line, count=1)
    line = line.strip(_PUNCT)
    if task == "first_letter":
        toks = line.split()
        return toks[0].strip(_PUNCT) if toks else ""
    return line


def score_answer(task: str, prediction: str, answer: str) -> bool:
    """True if ``prediction`` answers ``task`` with ``answer`` (see ``extract_answer``).

    add/sub: integer match; first_letter: case-insensitive; capital/currency: case-insensitive match of the first
    line (after a restated "The capital of X is" / "X的首都是") or of its first token.
    """
    got = extract_answer(task, prediction)
    if task in ("add", "sub"):
        return got == answer.strip()
    if task == "first_letter":
        return got.casefold() == answer.strip().casefold()
    ans = answer.strip().casefold()
    got_cf = got.casefold()
    first = got_cf.split()[0].strip(_PUNCT) if got_cf.split() else ""
    return bool(got_cf) and (got_cf == ans or first == ans)


# ------------------------------------------------------------------------------------------------- the reward
def verifiable_reward(completions: list[Any], task: list[str], answer: list[str], **_: Any) -> list[float]:
    """GRPO's verifiable reward: 1.0 when :func:`score_answer` accepts the reply, else 0.0.

    TRL calls it as ``reward(prompts=..., completions=..., task=[...], answer=[...], **other_columns)``; with
    conversational prompts each completion is ``[{"role": "assistant", "content": ...}]``.
    """
    rewards = []
    for completion, task_type, gold in zip(completions, task, answer):
        text = completion[0]["content"] if isinstance(completion, list) else str(completion)
        rewards.append(1.0 if score_answer(task_type, text, gold) else 0.0)
    return rewards
