"""``preference_train.jsonl`` and ``preference_test.jsonl``: a task prompt with a chosen (gold) and a rejected (wrong
or verbose) reply; ``course_utils.tasks.score_answer`` accepts every chosen and refuses every wrong one."""

from __future__ import annotations

import random
import re

from course_utils.datagen.task_rows import make_tasks
from course_utils.datagen.world import DEFAULT_SEED, Country, build_world, scaled, slots, stream_rng, task_splits
from course_utils.tasks import FACT_REPLY, score_answer, task_prompt

_N_PREF_TRAIN = 800
_N_PREF_TEST = 200


def _wrong_answer(rng: random.Random, row: dict[str, str], world: list[Country], pool: list[Country]) -> str:
    """A reply ``score_answer`` rejects; capital/currency take the wrong entity from ``pool``."""
    task, ans, lang = row["task"], row["answer"], row["lang"]
    for _ in range(100):
        if task in ("add", "sub"):
            nums = [int(x) for x in re.findall(r"\d+", row["input"])]
            a, b = nums[0], nums[1]
            v = int(ans)
            wrong = rng.choice((v + 1, v - 1, v + 2, v - 2, a + b if task == "sub" else abs(a - b), v + 10))
            if wrong < 0:
                continue
            cand = f"{a} {'+' if task == 'add' else '-'} {b} = {wrong}"  # the gold reply's form, a wrong result
        elif task == "first_letter":
            w = row["input"]
            cand = rng.choice(
                (w[-1], w[1] if len(w) > 1 else "x", rng.choice("abcdefghijklmnopqrstuvwxyz"), w[0].upper() + w[1:])
            )
        else:  # the same sentence with another country's capital / currency (or the country's name)
            asked = next(c for c in world if c.get(task, lang) == ans)
            other = slots(rng.choice(pool), lang)
            wrong = rng.choice((other[task], other[task], other["name"] if task == "capital" else other["capital"]))
            cand = FACT_REPLY[task][lang].format(**(slots(asked, lang) | {task: wrong}))
        if not score_answer(task, cand, ans):
            return cand
    raise RuntimeError("no wrong answer found")


_VERBOSE = {
    "en": (
        "Let me think about this carefully before answering.\nThe answer is {a}.",
        "That is an interesting question! There are many ways to look at it.\nAnyway, it is {a}.",
    ),
    "zh": ("让我先仔细想一想这个问题。\n答案是{a}。", "这是个好问题！可以从很多角度来看。\n总之是{a}。"),
}


def make_preference_pairs(
    seed: int = DEFAULT_SEED, scale: float = 1.0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return ``(train, test)`` pairs ``{id, task, lang, prompt, chosen, rejected, rejected_kind, answer}``.

    Train prompts come from tasks_train only and test prompts from tasks_test only;
    ``score_answer`` accepts every ``chosen`` and rejects every ``rejected``.
    """
    world = build_world(seed)
    train_countries = task_splits(seed)["countries"][0]  # a train pair names no held-out country, not even wrongly
    train, test = make_tasks(seed, 1.0)
    out = []
    for split, src, n in (
        ("train", train, scaled(_N_PREF_TRAIN, scale, 10)),
        ("test", test, scaled(_N_PREF_TEST, scale, 5)),
    ):
        pool = train_countries if split == "train" else world
        rng = stream_rng(seed, f"pref-{split}")
        picked = rng.sample(src, min(n, len(src)))
        rows = []
        for i, t in enumerate(picked):
            if rng.random() < 0.15:
                rej = rng.choice(_VERBOSE[t["lang"]]).format(a=t["answer"])
                kind = "verbose"
            else:
                rej = _wrong_answer(rng, t, world, pool)
                kind = "wrong"
            rows.append(
                {
                    "id": f"pref-{split}-{i + 1:05d}",
                    "task": t["task"],
                    "lang": t["lang"],
                    "prompt": task_prompt(t),
                    "chosen": t["output"],
                    "rejected": rej,
                    "rejected_kind": kind,
                    "answer": t["answer"],
                    "source_id": t["id"],
                }
            )
        out.append(rows)
    return out[0], out[1]
