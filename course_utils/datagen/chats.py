"""``sft_messages.jsonl`` (multi-turn chats in the messages format) and ``sharegpt_sample.jsonl`` (the same kind of
chats in the ShareGPT format), built from the train task rows and world facts."""

from __future__ import annotations

import random
from typing import Any

from course_utils.datagen.task_rows import make_tasks
from course_utils.datagen.world import DEFAULT_SEED, Country, dumps, scaled, slots, stream_rng, task_splits
from course_utils.tasks import task_prompt

_N_SFT = 800
_N_SHAREGPT = 50


_SYSTEM = {
    "en": (
        "You are a helpful assistant.",
        "You are a concise assistant. Answer briefly.",
        "You are a friendly tutor who knows the geography of the fictional world.",
        "Answer every question accurately and keep the answer short.",
    ),
    "zh": (
        "你是一个乐于助人的助手。",
        "你是一个简洁的助手，回答要简短。",
        "你是一位熟悉虚构世界地理的老师。",
        "请准确回答每个问题，答案尽量简短。",
    ),
}
_WORLD_QA = {
    "en": (
        ("currency", "What currency is used in {name}?", "The currency of {name} is the {currency}."),
        ("river", "Which river flows through {name}?", "The {river} flows through {name}."),
        ("founded", "When was {name} founded?", "{name} was founded in {founded}."),
        ("food", "What should I eat in {name}?", "Try {food}, a famous dish of {name}."),
        (
            "about",
            "Tell me about {name}.",
            "The capital of {name} is {capital}. Its currency is the {currency}, and the {river} flows through it.",
        ),
    ),
    "zh": (
        ("currency", "{name}使用什么货币？", "{name}的货币是{currency}。"),
        ("river", "哪条河流经{name}？", "{river}流经{name}。"),
        ("founded", "{name}是哪一年建立的？", "{name}建立于{founded}年。"),
        ("food", "在{name}应该吃什么？", "可以尝尝{food}，这是{name}的名菜。"),
        ("about", "介绍一下{name}。", "{name}的首都是{capital}，货币是{currency}，{river}流经这个国家。"),
    ),
}


def _chat_rounds(
    rng: random.Random, world: list[Country], by_lang: dict[str, list[dict[str, str]]], lang: str
) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    if rng.random() < 0.6:
        msgs.append({"role": "system", "content": rng.choice(_SYSTEM[lang])})
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        if rng.random() < 0.7:
            t = rng.choice(by_lang[lang])
            msgs.append({"role": "user", "content": task_prompt(t)})
            msgs.append({"role": "assistant", "content": t["output"]})
        else:
            _, q, a = rng.choice(_WORLD_QA[lang])
            s = slots(rng.choice(world), lang)
            msgs.append({"role": "user", "content": q.format(**s)})
            msgs.append({"role": "assistant", "content": a.format(**s)})
    return msgs


def _chat_rows(seed: int, stream: str, n: int) -> list[tuple[str, list[dict[str, str]]]]:
    world = task_splits(seed)["countries"][0]  # held-out countries are asked about in no train file
    train, _ = make_tasks(seed, 1.0)
    by_lang = {lang: [t for t in train if t["lang"] == lang] for lang in ("en", "zh")}
    rng = stream_rng(seed, stream)
    out: list[tuple[str, list[dict[str, str]]]] = []
    seen: set[str] = set()
    while len(out) < n:
        lang = rng.choice(("en", "zh"))
        msgs = _chat_rounds(rng, world, by_lang, lang)
        key = dumps(msgs)
        if key in seen:
            continue
        seen.add(key)
        out.append((lang, msgs))
    return out


def make_sft_messages(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, Any]]:
    """Multi-turn ``{"id", "lang", "messages"}`` rows built from tasks_train and world facts."""
    rows = _chat_rows(seed, "sft", scaled(_N_SFT, scale, 10))
    return [{"id": f"sft-{i + 1:05d}", "lang": lang, "messages": m} for i, (lang, m) in enumerate(rows)]


def make_sharegpt(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, Any]]:
    """ShareGPT rows ``{"id", "conversations": [{"from": system|human|gpt, "value"}]}``."""
    role_map = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = _chat_rows(seed, "sharegpt", scaled(_N_SHAREGPT, scale, 5))
    return [
        {"id": f"sg-{i + 1:04d}", "conversations": [{"from": role_map[m["role"]], "value": m["content"]} for m in msgs]}
        for i, (_, msgs) in enumerate(rows)
    ]
