"""``pretrain_corpus.jsonl``: documents about the world (facts, arithmetic, stories, how-tos) in English and Chinese,
plus the documents that ground the checkable tasks (the small arithmetic table, spellings, question-answer pages)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from course_utils.datagen.world import (
    DEFAULT_SEED,
    FACT_TEMPLATES,
    OBJECTS,
    WORDS,
    Country,
    build_world,
    dumps,
    person,
    scaled,
    slots,
    stream_rng,
    task_splits,
)

#: Target size of the corpus at ``scale=1.0`` (half of it Chinese, half English), before the grounding documents.
_PRETRAIN_BYTES = 2_400_000


_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ZH_DIGITS = "零一二三四五六七八九"


def _en_num(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    t, o = divmod(n, 10)
    return _EN_TENS[t] + ("" if o == 0 else "-" + _EN_ONES[o])


def _zh_num(n: int) -> str:
    if n < 10:
        return _ZH_DIGITS[n]
    t, o = divmod(n, 10)
    head = "十" if t == 1 else _ZH_DIGITS[t] + "十"
    return head + ("" if o == 0 else _ZH_DIGITS[o])


def _facts_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    c = rng.choice(world)
    s = slots(c, lang)
    tpl = FACT_TEMPLATES[lang]
    attrs = list(tpl)
    k = rng.randint(1, 5)
    chosen = rng.sample(attrs, k)
    sents = [rng.choice(tpl[a]).format(**s) for a in chosen]
    if rng.random() < 0.3:
        intro = {
            "en": (
                "Here are some facts about {name}.",
                "Let us learn about {name}.",
                "This is a short note about {name}.",
            ),
            "zh": ("下面是关于{name}的一些事实。", "我们来了解一下{name}。", "这是一段关于{name}的介绍。"),
        }
        sents.insert(0, rng.choice(intro[lang]).format(**s))
    if rng.random() < 0.25:
        d = rng.choice(world)
        if d.id != c.id and d.founded != c.founded:
            a, b = (c, d) if c.founded < d.founded else (d, c)
            diff = b.founded - a.founded
            if lang == "en":
                sents.append(f"{a.name_en} was founded {diff} years before {b.name_en}.")
            else:
                sents.append(f"{a.name_zh}比{b.name_zh}早{diff}年建立。")
    return (" " if lang == "en" else "").join(sents)


def _arith_sentence(rng: random.Random, lang: str) -> str:
    kind = rng.choice(("add", "add", "sub", "sub", "mul", "story"))
    if kind == "add":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        c, op_en, op_zh, sym = a + b, "plus", "加", "+"
    elif kind == "sub":
        a = rng.randint(0, 20)
        b = rng.randint(0, a)
        c, op_en, op_zh, sym = a - b, "minus", "减", "-"
    elif kind == "mul":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c, op_en, op_zh, sym = a * b, "times", "乘", "×"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        per = person(rng, lang)
        sing, plur, zh_obj, mw = rng.choice(OBJECTS)
        if lang == "en":

            def q(n: int) -> str:
                return f"{n} {sing if n == 1 else plur}"

            return rng.choice(
                (
                    f"{per['N']} has {q(a)} and gets {b} more, so {per['p']} now has {q(a + b)}.",
                    f"If you have {q(a)} and someone gives you {b} more, you have {q(a + b)}.",
                    f"{per['N']} had {q(a + b)} and gave away {b}, so {per['p']} has {q(a)} left.",
                )
            )
        return rng.choice(
            (
                f"{per['N']}有{a}{mw}{zh_obj}，又买了{b}{mw}，现在一共有{a + b}{mw}{zh_obj}。",
                f"如果你有{a}{mw}{zh_obj}，别人又给你{b}{mw}，你就有{a + b}{mw}{zh_obj}。",
                f"{per['N']}原来有{a + b}{mw}{zh_obj}，送出去{b}{mw}，还剩{a}{mw}。",
            )
        )
    if lang == "en":
        return rng.choice(
            (
                f"{a} {sym} {b} = {c}.",
                f"{_en_num(a).capitalize()} {op_en} {_en_num(b)} equals {_en_num(c)}.",
                f"{a} {op_en} {b} is {c}.",
                f"The result of {a} {sym} {b} is {c}.",
            )
        )
    return rng.choice(
        (
            f"{a} {sym} {b} = {c}。",
            f"{_zh_num(a)}{op_zh}{_zh_num(b)}等于{_zh_num(c)}。",
            f"{a}{op_zh}{b}等于{c}。",
            f"{a} {sym} {b} 的结果是{c}。",
        )
    )


def _arith_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    sents = [_arith_sentence(rng, lang) for _ in range(rng.randint(1, 8))]
    return (" " if lang == "en" else "").join(sents)


_STORY = {
    "en": {
        "open": (
            "{N} lived in {capital}, the capital of {name}.",
            "{N} grew up in a small village in {name}.",
            "Last spring, {N} travelled to {name}.",
            "{N} was a student in {capital}.",
        ),
        "mid": (
            "One morning, {p} walked along the {river}.",
            "{P} bought some {food} at the market.",
            "The weather was {weather}, so {p} {weather_action}.",
            "{P} met an old friend named {N2}.",
            "{N2} told {o} a story about the year {founded}, when {name} was founded.",
            "They paid for lunch with {k} {currency}s.",
            "{P} wrote a letter to {poss} {relative}.",
            "In the afternoon, {p} visited the {place}.",
            "{P} felt {feeling} and {feeling_action}.",
        ),
        "close": (
            "In the evening, {p} went home happy.",
            "It was a day {p} would never forget.",
            "The next day, {p} started planning another trip.",
            "{P} fell asleep early that night.",
        ),
    },
    "zh": {
        "open": (
            "{N}住在{name}的首都{capital}。",
            "{N}在{name}的一个小村子里长大。",
            "去年春天，{N}去{name}旅行。",
            "{N}是{capital}的一名学生。",
        ),
        "mid": (
            "一天早上，{N}沿着{river}散步。",
            "{N}在市场上买了一些{food}。",
            "{weather}，{N}{weather_action}。",
            "{N}遇到了一个老朋友{N2}。",
            "{N2}给{N}讲了{founded}年{name}建国的故事。",
            "他们用{k}{currency}付了午饭钱。",
            "{N}给{relative}写了一封信。",
            "下午，{N}参观了{place}。",
            "{N}觉得很{feeling}，{feeling_action}。",
        ),
        "close": (
            "晚上，{N}高高兴兴地回家了。",
            "这是{N}永远不会忘记的一天。",
            "第二天，{N}开始计划下一次旅行。",
            "那天晚上{N}很早就睡了。",
        ),
    },
}
_STORY_WORDS = {
    "weather": (
        ("sunny", "天气很晴朗"),
        ("rainy", "外面下着雨"),
        ("windy", "外面刮着大风"),
        ("cold", "天气很冷"),
        ("warm", "天气很暖和"),
    ),
    "weather_action": (
        ("stayed near the window", "待在窗边"),
        ("took a long walk", "出去散了很久的步"),
        ("drank hot tea", "喝了一杯热茶"),
        ("read a book", "读了一本书"),
    ),
    "place": (
        ("library", "图书馆"),
        ("museum", "博物馆"),
        ("harbour", "港口"),
        ("old bridge", "老桥"),
        ("night market", "夜市"),
        ("school", "学校"),
        ("park", "公园"),
        ("train station", "火车站"),
    ),
    "feeling": (("happy", "开心"), ("tired", "累"), ("curious", "好奇"), ("calm", "平静"), ("excited", "兴奋")),
    "feeling_action": (
        ("started to sing", "于是唱起了歌"),
        ("decided to rest early", "决定早点休息"),
        ("called a friend", "给朋友打了个电话"),
        ("wrote about the day in a diary", "在日记里写下了这一天"),
    ),
    "relative": (
        ("sister", "姐姐"),
        ("brother", "哥哥"),
        ("grandmother", "奶奶"),
        ("teacher", "老师"),
        ("cousin", "表哥"),
    ),
}


def story_doc(rng: random.Random, world: list[Country], lang: str, country: Country | None = None) -> str:
    li = 0 if lang == "en" else 1
    c = rng.choice(world) if country is None else country
    s = slots(c, lang)
    s.update(person(rng, lang))
    s["N2"] = s["N"]
    while s["N2"] == s["N"]:
        s["N2"] = person(rng, lang)["N"]
    s["k"] = str(rng.randint(2, 30))
    for key, opts in _STORY_WORDS.items():
        s[key] = rng.choice(opts)[li]
    pools = _STORY[lang]
    mids = [pools["mid"][i] for i in sorted(rng.sample(range(len(pools["mid"])), rng.randint(1, 5)))]
    sents = [rng.choice(pools["open"])] + mids
    if rng.random() < 0.7:
        sents.append(rng.choice(pools["close"]))
    return (" " if lang == "en" else "").join(x.format(**s) for x in sents)


_HOWTO: tuple[tuple[tuple[str, str], tuple[tuple[str, str], ...]], ...] = (
    (
        ("make {food}", "做{food}"),
        (
            ("wash the ingredients", "把食材洗干净"),
            ("cut everything into small pieces", "把所有东西切成小块"),
            ("heat some oil in a pan", "在锅里倒一点油加热"),
            ("add a pinch of salt", "加一点盐"),
            ("cook it for {m} minutes", "煮{m}分钟"),
            ("taste it and adjust the flavour", "尝一尝再调整味道"),
            ("serve it while it is hot", "趁热端上桌"),
        ),
    ),
    (
        ("plant a tree", "种一棵树"),
        (
            ("choose a sunny place", "选一个阳光充足的地方"),
            ("dig a hole about {m} centimetres deep", "挖一个大约{m}厘米深的坑"),
            ("put the young tree in the hole", "把小树放进坑里"),
            ("fill the hole with soil", "用土把坑填满"),
            ("water it well", "浇足水"),
            ("check it again after {d} days", "{d}天后再去看看"),
        ),
    ),
    (
        ("send a letter to {capital}", "给{capital}寄一封信"),
        (
            ("write the letter", "写好信"),
            ("fold it and put it in an envelope", "把信折好放进信封"),
            ("write an address in {capital} on the envelope", "在信封上写上{capital}的地址"),
            ("buy a stamp", "买一张邮票"),
            ("take it to the post office", "把信送到邮局"),
        ),
    ),
    (
        ("train a small language model", "训练一个小型语言模型"),
        (
            ("collect and clean the text data", "收集并清洗文本数据"),
            ("train a tokenizer", "训练一个分词器"),
            ("pack the tokens into blocks of {n} tokens", "把词元拼接成每块{n}个词元"),
            ("set a small learning rate", "设置一个较小的学习率"),
            ("train for {d} epochs", "训练{d}个轮次"),
            ("evaluate the model on held-out data", "在留出数据上评估模型"),
            ("save the checkpoint", "保存检查点"),
        ),
    ),
    (
        ("clean an instruction dataset", "清洗一个指令数据集"),
        (
            ("remove exact duplicates", "删除完全重复的样本"),
            ("normalise the text", "规范化文本"),
            ("filter out very short answers", "过滤掉过短的回答"),
            ("mask e-mail addresses and phone numbers", "遮盖邮箱地址和电话号码"),
            ("check the language of each sample", "检查每条样本的语言"),
            ("save the result as JSONL", "把结果保存为JSONL"),
        ),
    ),
    (
        ("prepare for a trip to {name}", "准备去{name}旅行"),
        (
            ("find {name} on the map", "在地图上找到{name}"),
            ("exchange some money for {currency}s", "换一些{currency}"),
            ("book a room in {capital}", "在{capital}订一个房间"),
            ("learn a few words of the local language", "学几句当地的话"),
            ("pack light clothes", "带几件轻便的衣服"),
            ("plan a walk along the {river}", "计划沿着{river}散步"),
        ),
    ),
)


def howto_parts(rng: random.Random, world: list[Country], lang: str) -> tuple[str, list[str]]:
    li = 0 if lang == "en" else 1
    topic, steps = rng.choice(_HOWTO)
    s = slots(rng.choice(world), lang)
    s.update(m=str(rng.randint(5, 30)), d=str(rng.randint(2, 9)), n=str(rng.choice((128, 256, 512))))
    k = rng.randint(3, min(5, len(steps)))
    idx = sorted(rng.sample(range(len(steps)), k))
    return topic[li].format(**s), [steps[i][li].format(**s) for i in idx]


def _howto_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    topic, steps = howto_parts(rng, world, lang)
    if rng.random() < 0.3:
        if lang == "en":
            body = " ".join(f"Step {i + 1}: {st[0].upper()}{st[1:]}." for i, st in enumerate(steps))
            return f"How to {topic}. {body}"
        body = "".join(f"第{_zh_num(i + 1)}步，{st}。" for i, st in enumerate(steps))
        return f"如何{topic}：{body}"
    if lang == "en":
        conn = ["First"] + [rng.choice(("Then", "Next", "After that")) for _ in steps[1:-1]] + ["Finally"]
        return f"How to {topic}. " + " ".join(f"{c}, {st}." for c, st in zip(conn, steps))
    conn = ["首先"] + [rng.choice(("然后", "接着", "之后")) for _ in steps[1:-1]] + ["最后"]
    return f"如何{topic}：" + "".join(f"{c}，{st}。" for c, st in zip(conn, steps))


_PRETRAIN_SOURCES: tuple[tuple[str, Callable[[random.Random, list[Country], str], str], int], ...] = (
    ("facts", _facts_doc, 40),
    ("arithmetic", _arith_doc, 20),
    ("story", story_doc, 25),
    ("howto", _howto_doc, 15),
)


_QA_TAG = {"en": ("Q: ", "A: "), "zh": ("问：", "答：")}
_QA_FACT = {
    "en": {"capital": "What is the capital of {name}?", "currency": "What is the currency of {name}?"},
    "zh": {"capital": "{name}的首都是哪里？", "currency": "{name}的货币是什么？"},
}
_QA_LETTER = {"en": "What is the first letter of {w}?", "zh": "{w}的首字母是什么？"}
#: Documents per language that ground the checkable tasks (``_grounding_docs``), before ``scale``.
_N_GROUNDING = {"drill": 1500, "qa": 1200, "spelling": 600, "qa_letters": 300}


def _grounding_docs(seed: int, scale: float) -> list[dict[str, str]]:
    """Pretraining documents that make the checkable tasks learnable by a 1.5M-parameter model.

    * ``drill``: the whole small table (a + b for a, b <= 9; a - b for b <= a <= 19), test pairs included, as
      ``a + b = c.`` lines: arithmetic the base knows before any SFT.
    * ``spelling``: every word's first letter and spelling, test words included (a BPE token hides its letters).
    * ``qa``: question-answer pages about the **train** countries, pairs and words only ("Q: What is the capital
      of X?\nA: Y"). Knowledge stated only in sentences is hard to extract by a question; a corpus that also asks
      about some entities teaches the model to answer questions about the others (Allen-Zhu & Li, "Physics of
      Language Models 3.1", mixed training).
    """
    sp = task_splits(seed)
    table = [(a, b, "+") for a in range(10) for b in range(10)] + [(a, b, "-") for a in range(20) for b in range(a + 1)]
    train_items: list[tuple[str, Any, str]] = [
        ("fact", c, k) for c in sp["countries"][0] for k in ("capital", "currency")
    ]
    train_items += [("sum", p, "+") for p in sp["add"][0]] + [("sum", p, "-") for p in sp["sub"][0]]
    docs: list[dict[str, str]] = []
    for lang in ("en", "zh"):
        rng = stream_rng(seed, f"grounding-{lang}")
        q_tag, a_tag = _QA_TAG[lang]
        for _ in range(scaled(_N_GROUNDING["drill"], scale, 2)):
            text = " ".join(f"{a} {op} {b} = {a + b if op == '+' else a - b}." for a, b, op in rng.sample(table, 8))
            docs.append({"text": text, "lang": lang, "source": "drill"})
        for _ in range(scaled(_N_GROUNDING["qa"], scale, 2)):
            lines = []
            for kind, x, k in rng.sample(train_items, 6):
                if kind == "fact":
                    sl = slots(x, lang)
                    lines.append(f"{q_tag}{_QA_FACT[lang][k].format(**sl)}\n{a_tag}{sl[k]}")
                else:
                    a, b = x
                    lines.append(f"{q_tag}{a} {k} {b}\n{a_tag}{a + b if k == '+' else a - b}")
            docs.append({"text": "\n".join(lines), "lang": lang, "source": "qa"})
        for _ in range(scaled(_N_GROUNDING["spelling"], scale, 2)):
            parts = []
            for w in rng.sample(WORDS, 6):
                if lang == "en":
                    parts.append(
                        f"The word {w} starts with the letter {w[0]}."
                        if rng.random() < 0.5
                        else f"{w} is spelled {' '.join(w)}."
                    )
                else:
                    parts.append(f"单词{w}的首字母是{w[0]}。" if rng.random() < 0.5 else f"{w}的拼写是{' '.join(w)}。")
            docs.append({"text": (" " if lang == "en" else "").join(parts), "lang": lang, "source": "spelling"})
        for _ in range(scaled(_N_GROUNDING["qa_letters"], scale, 2)):
            text = "\n".join(
                f"{q_tag}{_QA_LETTER[lang].format(w=w)}\n{a_tag}{w[0]}" for w in rng.sample(sp["words"][0], 6)
            )
            docs.append({"text": text, "lang": lang, "source": "qa"})
    return docs


def make_pretrain_corpus(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, str]]:
    """Pretraining documents ``{"text", "lang", "source"}``, about half zh / half en by bytes."""
    world = build_world(seed)
    target = scaled(_PRETRAIN_BYTES, scale, 1000) // 2
    names = [s[0] for s in _PRETRAIN_SOURCES]
    weights = [s[2] for s in _PRETRAIN_SOURCES]
    fns = {s[0]: s[1] for s in _PRETRAIN_SOURCES}
    docs: list[dict[str, str]] = []
    for lang in ("en", "zh"):
        rng = stream_rng(seed, f"pretrain-{lang}")
        size = 0
        while size < target:
            src = rng.choices(names, weights)[0]
            row = {"text": fns[src](rng, world, lang), "lang": lang, "source": src}
            docs.append(row)
            size += len(dumps(row).encode("utf-8")) + 1
    docs += _grounding_docs(seed, scale)
    stream_rng(seed, "pretrain-shuffle").shuffle(docs)
    return docs
