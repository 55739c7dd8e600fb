"""``tasks_train.jsonl`` and ``tasks_test.jsonl``: checkable-task rows (``course_utils.tasks``) with held-out test
items (operand pairs, words, countries; see ``world.task_splits``)."""

from __future__ import annotations

from typing import Any

from course_utils.datagen.world import DEFAULT_SEED, scaled, slots, stream_rng, task_splits
from course_utils.tasks import FACT_REPLY, TASK_TYPES

_N_TASKS_TRAIN = 1200
_N_TASKS_TEST = 300


_TASK_INSTR: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {
        "en": (
            "Add the two numbers.",
            "What is the sum?",
            "Compute the sum of the two numbers.",
            "Calculate the result.",
        ),
        "zh": ("计算两个数的和。", "求和。", "请算出结果。", "两个数相加等于多少？"),
    },
    "sub": {
        "en": (
            "Subtract the second number from the first.",
            "What is the difference?",
            "Compute the result of the subtraction.",
            "Calculate the result.",
        ),
        "zh": ("计算两个数的差。", "求差。", "请算出减法的结果。", "相减等于多少？"),
    },
    "first_letter": {
        "en": (
            "What is the first letter of the word? Answer with one letter.",
            "Give the first letter of this word.",
            "Which letter does this word start with?",
        ),
        "zh": ("这个单词的第一个字母是什么？只回答字母。", "写出这个单词的首字母。", "这个单词以哪个字母开头？"),
    },
    "capital": {
        "en": ("Answer in one sentence.", "Reply with a short sentence."),
        "zh": ("用一句话回答。", "请简短回答。"),
    },
    "currency": {
        "en": ("Answer in one sentence.", "Reply with a short sentence."),
        "zh": ("用一句话回答。", "请简短回答。"),
    },
}
_TASK_INPUT: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {"en": ("{a} + {b}", "{a} plus {b}"), "zh": ("{a} + {b}", "{a}加{b}")},
    "sub": {"en": ("{a} - {b}", "{a} minus {b}"), "zh": ("{a} - {b}", "{a}减{b}")},
}
# Fact questions. The countries are split (``task_splits``): a test country's capital and currency are asked in no
# train file, only stated in the pretraining corpus. Capital phrasings are split as well; test rows use both sets.
# fmt: off
_CURRENCY_Q = {
    "en": ("What is the currency of {name}?", "Which currency do people use in {name}?",
           "Name the currency of {name}.", "What money is used in {name}?"),
    "zh": ("{name}的货币是什么？", "{name}使用哪种货币？", "请说出{name}的货币。", "{name}人用什么钱？"),
}
_CAPITAL_Q_TRAIN = {
    "en": ("What is the capital of {name}?", "Name the capital city of {name}.",
           "Which city is the capital of {name}?", "{name}'s capital is which city?"),
    "zh": ("{name}的首都是哪里？", "{name}的首都是哪座城市？", "请说出{name}的首都。", "哪座城市是{name}的首都？"),
}
_CAPITAL_Q_TEST = {
    "en": ("Tell me the capital of {name}.", "The capital city of {name} is called what?",
           "In {name}, which city serves as the capital?"),
    "zh": ("{name}的首都叫什么？", "告诉我{name}的首都。", "{name}以哪座城市为首都？"),
}
# fmt: on


def _task_candidates(task: str, keys: list[Any], split: str) -> list[dict[str, str]]:
    rows = []
    for lang in ("en", "zh"):
        for key in keys:
            if task in ("add", "sub"):
                a, b = key
                ans = str(a + b if task == "add" else a - b)
                reply = f"{a} {'+' if task == 'add' else '-'} {b} = {ans}"  # the corpus' drill line
                for ins in _TASK_INSTR[task][lang]:
                    for inp in _TASK_INPUT[task][lang]:
                        rows.append(
                            dict(
                                task=task,
                                lang=lang,
                                instruction=ins,
                                input=inp.format(a=a, b=b),
                                output=reply,
                                answer=ans,
                            )
                        )
            elif task == "first_letter":
                for ins in _TASK_INSTR[task][lang]:
                    rows.append(dict(task=task, lang=lang, instruction=ins, input=key, output=key[0], answer=key[0]))
            else:  # capital, currency: the reply restates the corpus' fact sentence
                s = slots(key, lang)
                if task == "capital":
                    qs = _CAPITAL_Q_TRAIN[lang] + (_CAPITAL_Q_TEST[lang] if split == "test" else ())
                else:
                    qs = _CURRENCY_Q[lang]
                for ins in _TASK_INSTR[task][lang]:
                    for q in qs:
                        rows.append(
                            dict(
                                task=task,
                                lang=lang,
                                instruction=ins,
                                input=q.format(name=s["name"]),
                                output=FACT_REPLY[task][lang].format(**s),
                                answer=s[task],
                            )
                        )
    return rows


def make_tasks(seed: int = DEFAULT_SEED, scale: float = 1.0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return ``(train, test)`` checkable-task rows with held-out test prompts.

    Held out: add/sub operand pairs, first_letter words, capital/currency countries (see ``task_splits``).
    """
    sp = task_splits(seed)
    keys = {
        "add": sp["add"],
        "sub": sp["sub"],
        "first_letter": sp["words"],
        "capital": sp["countries"],
        "currency": sp["countries"],
    }
    out = []
    for si, (split, total) in enumerate(
        (("train", scaled(_N_TASKS_TRAIN, scale, 10)), ("test", scaled(_N_TASKS_TEST, scale, 10)))
    ):
        srng = stream_rng(seed, f"tasks-{split}")
        rows: list[dict[str, str]] = []
        for ti, task in enumerate(TASK_TYPES):
            n = total // len(TASK_TYPES) + (1 if ti < total % len(TASK_TYPES) else 0)
            cands = _task_candidates(task, keys[task][si], split)
            rows.extend(srng.sample(cands, min(n, len(cands))))
        srng.shuffle(rows)
        prefix = "tr" if split == "train" else "te"
        out.append([{"id": f"{prefix}{i + 1:05d}", **r} for i, r in enumerate(rows)])
    return out[0], out[1]
