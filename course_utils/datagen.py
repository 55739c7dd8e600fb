"""Seeded, deterministic generator for the course's sample data.

Everything under ``data_samples/`` is produced by :func:`generate_all` from a
single integer seed.  The content is invented by this module (a fictional
"world" of countries, template sentences, small arithmetic facts and word
lists), so the data is CC0-1.0 and contains no third-party text.

Determinism rules followed here:

* every random choice uses a private ``random.Random`` created from a string
  ``f"datagen:{seed}:{stream}"`` (never the global ``random`` module);
* no iteration over sets, no floats in the written content;
* JSON is written with ``ensure_ascii=False`` and ``\\n`` line endings.

Standard library only.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "BAD_EXAMPLES",
    "BANNED_WORDS",
    "DEFAULT_SEED",
    "DIRTY_KINDS",
    "FILES",
    "TASK_TYPES",
    "Country",
    "build_world",
    "dirty_manifest",
    "extract_answer",
    "generate_all",
    "make_alpaca_raw",
    "make_pretrain_corpus",
    "make_preference_pairs",
    "make_sft_messages",
    "make_sharegpt",
    "make_tasks",
    "score_answer",
    "task_splits",
    "task_prompt",
    "world_facts",
]

DEFAULT_SEED: int = 0

#: The checkable task types (small, closed answer spaces).
TASK_TYPES: tuple[str, ...] = ("add", "sub", "first_letter", "capital", "currency")
#: ``data.read_jsonl`` schema of ``tasks_{train,test}.jsonl`` (``input`` may be empty).
TASK_SCHEMA: dict[str, type] = {"id": str, "task": str, "instruction": str, "input": str, "output": str,
                                "answer": str}

#: Words that the cleaning lesson must filter out (English and Chinese).
BANNED_WORDS: tuple[str, ...] = ("casino", "jackpot", "spamcoin", "赌场", "博彩", "刷单")

#: Kinds of dirt injected into ``alpaca_raw.jsonl`` (see :func:`dirty_manifest`).
DIRTY_KINDS: tuple[str, ...] = (
    "exact_duplicate",
    "near_duplicate",
    "empty_output",
    "too_short",
    "pii",
    "mojibake",
    "nfkc",
    "banned_word",
    "wrong_language",
)

#: Logical name -> file name (relative to the output directory).
FILES: dict[str, str] = {
    "pretrain": "pretrain_corpus.jsonl",
    "tasks_train": "tasks_train.jsonl",
    "tasks_test": "tasks_test.jsonl",
    "alpaca_raw": "alpaca_raw.jsonl",
    "alpaca_manifest": "alpaca_raw_manifest.json",
    "sft_messages": "sft_messages.jsonl",
    "sharegpt": "sharegpt_sample.jsonl",
    "preference_train": "preference_train.jsonl",
    "preference_test": "preference_test.jsonl",
    "bad_broken_line": "bad_examples/broken_line.jsonl",
    "bad_missing_field": "bad_examples/missing_field.jsonl",
    "bad_wrong_type": "bad_examples/wrong_type.jsonl",
    "bad_empty_field": "bad_examples/empty_field.jsonl",
    "bad_non_utf8": "bad_examples/non_utf8.jsonl",
    "bad_roles": "bad_examples/bad_roles.jsonl",
    "bad_no_assistant": "bad_examples/no_assistant.jsonl",
    "readme": "README.md",
}

# Default sizes at scale=1.0
_PRETRAIN_BYTES = 2_400_000
_N_TASKS_TRAIN = 1200
_N_TASKS_TEST = 300
_N_ALPACA = 1500
_N_SFT = 800
_N_SHAREGPT = 50
_N_PREF_TRAIN = 800
_N_PREF_TEST = 200


def _rng(seed: int, stream: str) -> random.Random:
    """Private RNG for one named stream; independent of other streams."""
    return random.Random(f"datagen:{seed}:{stream}")


def _n(base: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(base * scale)))


# ---------------------------------------------------------------------------
# The fictional world
# ---------------------------------------------------------------------------

_SYLL: tuple[tuple[str, str], ...] = (
    ("ka", "卡"), ("lo", "洛"), ("mi", "米"), ("ra", "拉"), ("ve", "维"), ("do", "多"),
    ("su", "苏"), ("ta", "塔"), ("ni", "尼"), ("bel", "贝"), ("mor", "莫"), ("zan", "赞"),
    ("fen", "芬"), ("lu", "鲁"), ("sa", "萨"), ("te", "特"), ("ri", "里"), ("no", "诺"),
    ("ga", "加"), ("po", "波"), ("he", "赫"), ("da", "达"), ("ke", "柯"), ("ma", "玛"),
    ("vo", "沃"), ("li", "丽"), ("ro", "罗"), ("si", "西"), ("tor", "托"), ("wen", "温"),
    ("ya", "雅"), ("zo", "佐"), ("ba", "巴"), ("fi", "菲"), ("ha", "哈"), ("ki", "基"),
)
_COUNTRY_SUFFIX = (("ria", "里亚"), ("land", "兰"), ("stan", "斯坦"), ("dor", "多尔"),
                   ("nia", "尼亚"), ("vania", "瓦尼亚"))
_CAPITAL_SUFFIX = (("ton", "顿"), ("burg", "堡"), ("port", "港"), ("ville", "维尔"),
                   ("grad", "格勒"), ("mouth", "茅斯"))
_CURRENCY_UNIT = (("crown", "克朗"), ("mark", "马克"), ("dinar", "第纳尔"), ("florin", "弗罗林"),
                  ("ducat", "杜卡特"), ("shell", "贝币"), ("pearl", "珠币"), ("leaf", "叶币"))
_FOOD_ADJ = (("sweet", "甜"), ("spicy", "辣"), ("smoked", "熏"), ("honey", "蜂蜜"),
             ("sour", "酸"), ("grilled", "烤"), ("steamed", "蒸"), ("crispy", "脆"))
_FOOD_DISH = (("noodles", "面条"), ("dumplings", "饺子"), ("fish soup", "鱼汤"), ("bread", "面包"),
              ("pancakes", "煎饼"), ("rice", "米饭"), ("tofu", "豆腐"), ("mushroom stew", "蘑菇炖菜"),
              ("lamb skewers", "羊肉串"), ("bean cakes", "豆饼"), ("cheese pie", "奶酪派"),
              ("plum pudding", "李子布丁"))


@dataclass(frozen=True)
class Country:
    """One fictional country with an English and a Chinese name for every fact."""

    id: str
    name_en: str
    name_zh: str
    capital_en: str
    capital_zh: str
    currency_en: str
    currency_zh: str
    river_en: str
    river_zh: str
    food_en: str
    food_zh: str
    founded: int

    def get(self, field: str, lang: str) -> str:
        """Return ``field`` ("name", "capital", ...) in language ``lang``."""
        if field == "founded":
            return str(self.founded)
        return str(getattr(self, f"{field}_{lang}"))


def build_world(seed: int = DEFAULT_SEED, n_countries: int = 60) -> list[Country]:
    """Build the list of fictional countries for ``seed`` (deterministic)."""
    rng = _rng(seed, "world")
    used_en: set[str] = set()
    used_zh: set[str] = set()

    def word(n_syll: int, suffix: tuple[str, str] | None) -> tuple[str, str]:
        for _ in range(10_000):
            parts = [rng.choice(_SYLL) for _ in range(n_syll)]
            en = "".join(p[0] for p in parts)
            zh = "".join(p[1] for p in parts)
            if suffix is not None:
                en += suffix[0]
                zh += suffix[1]
            en = en.capitalize()
            if en not in used_en and zh not in used_zh:
                used_en.add(en)
                used_zh.add(zh)
                return en, zh
        raise RuntimeError("name space exhausted")

    foods = [(f"{a[0]} {d[0]}", f"{a[1]}{d[1]}") for a in _FOOD_ADJ for d in _FOOD_DISH]
    rng.shuffle(foods)
    if n_countries > len(foods):
        raise ValueError("too many countries for the food list")
    countries = []
    for i in range(n_countries):
        name = word(rng.choice((1, 2)), rng.choice(_COUNTRY_SUFFIX))
        capital = word(2, rng.choice(_CAPITAL_SUFFIX))
        cur_root = word(2, None)
        unit = rng.choice(_CURRENCY_UNIT)
        river = word(2, None)
        countries.append(Country(
            id=f"c{i + 1:02d}",
            name_en=name[0], name_zh=name[1],
            capital_en=capital[0], capital_zh=capital[1],
            currency_en=f"{cur_root[0]} {unit[0]}", currency_zh=f"{cur_root[1]}{unit[1]}",
            river_en=f"{river[0]} River", river_zh=f"{river[1]}河",
            food_en=foods[i][0], food_zh=foods[i][1],
            founded=rng.randint(800, 1990),
        ))
    return countries


_FACT_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "capital": (
            "The capital of {name} is {capital}.",
            "{capital} is the capital city of {name}.",
            "The capital city of {name} is {capital}.",
            "{name}'s capital is {capital}.",
            "The government of {name} sits in {capital}.",
            "Many travellers to {name} arrive first in {capital}, its capital.",
        ),
        "currency": (
            "The currency of {name} is the {currency}.",
            "People in {name} pay with the {currency}.",
            "The {currency} is the money used in {name}.",
            "In {name}, prices are written in {currency}s.",
        ),
        "river": (
            "The {river} flows through {name}.",
            "The longest river in {name} is the {river}.",
            "{capital} stands on the banks of the {river}.",
        ),
        "founded": (
            "{name} was founded in {founded}.",
            "The country of {name} dates back to {founded}.",
            "{name} became a country in the year {founded}.",
        ),
        "food": (
            "A famous dish of {name} is {food}.",
            "If you visit {name}, try the {food}.",
            "People in {name} love {food}.",
            "{Food} is a well-known food from {name}.",
        ),
    },
    "zh": {
        "capital": (
            "{name}的首都是{capital}。",
            "{capital}是{name}的首都。",
            "{name}的首都城市是{capital}。",
            "{name}政府设在首都{capital}。",
            "去{name}旅行的人大多先到首都{capital}。",
        ),
        "currency": (
            "{name}的货币是{currency}。",
            "在{name}，人们用{currency}付钱。",
            "{currency}是{name}使用的货币。",
        ),
        "river": (
            "{river}流经{name}。",
            "{name}最长的河是{river}。",
            "{capital}坐落在{river}岸边。",
        ),
        "founded": (
            "{name}建立于{founded}年。",
            "{name}的历史可以追溯到{founded}年。",
            "{name}在{founded}年成为一个国家。",
        ),
        "food": (
            "{name}有名的美食是{food}。",
            "去{name}一定要尝尝{food}。",
            "{name}的人很喜欢吃{food}。",
            "{food}是{name}的名菜。",
        ),
    },
}

# Parallel (en, zh) sentence pairs used for translation rows.
_PARALLEL_FACTS: tuple[tuple[str, str], ...] = (
    ("The capital of {name_en} is {capital_en}.", "{name_zh}的首都是{capital_zh}。"),
    ("The currency of {name_en} is the {currency_en}.", "{name_zh}的货币是{currency_zh}。"),
    ("The {river_en} flows through {name_en}.", "{river_zh}流经{name_zh}。"),
    ("{name_en} was founded in {founded}.", "{name_zh}建立于{founded}年。"),
    ("People in {name_en} love {food_en}.", "{name_zh}的人很喜欢吃{food_zh}。"),
)


def _slots(c: Country, lang: str) -> dict[str, str]:
    d = {k: c.get(k, lang) for k in ("name", "capital", "currency", "river", "food", "founded")}
    d["Food"] = d["food"][:1].upper() + d["food"][1:]
    return d


def world_facts(seed: int = DEFAULT_SEED, lang: str = "en") -> list[str]:
    """One canonical fact sentence per (country, attribute), in ``lang``."""
    out = []
    for c in build_world(seed):
        s = _slots(c, lang)
        for attr in ("capital", "currency", "river", "founded", "food"):
            out.append(_FACT_TEMPLATES[lang][attr][0].format(**s))
    return out


# ---------------------------------------------------------------------------
# Numbers and word lists
# ---------------------------------------------------------------------------

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen").split()
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


_WORDS: tuple[str, ...] = tuple("""
apple bread chair table river house green water light money paper music
horse tiger zebra lemon mango grape melon onion bean rice salt sugar honey
cloud storm snow rain wind stone sand glass metal gold iron wood leaf tree
bird fish frog duck goat sheep mouse camel eagle whale shark snake
book pen desk door road bridge tower city town farm garden field hill lake
ocean beach island forest valley cave star moon sun earth planet
red blue pink black white brown
cat dog cow pig fox owl bee ant bat
cup bowl plate fork knife spoon pot pan
shirt coat hat shoe sock glove scarf
happy quiet brave kind calm quick slow small large young
run jump swim read write sing dance cook walk sleep
king queen child baby uncle aunt friend
north south east west
train plane boat truck
piano drum flute violin
pizza pasta soup cake candy juice milk tea
""".split())

_EN_NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "f"), ("Leo", "m"), ("Anna", "f"), ("Tom", "m"), ("Lily", "f"), ("Sam", "m"),
    ("Nora", "f"), ("Ben", "m"), ("Ella", "f"), ("Max", "m"), ("Zoe", "f"), ("Omar", "m"),
    ("Ivy", "f"), ("Ken", "m"), ("Lucy", "f"), ("Hugo", "m"),
)
_ZH_NAMES: tuple[str, ...] = ("小明", "小红", "小华", "小丽", "李雷", "韩梅梅", "王芳", "张伟",
                              "刘洋", "陈静", "赵磊", "孙悦")
_OBJECTS: tuple[tuple[str, str, str, str], ...] = (
    ("apple", "apples", "苹果", "个"), ("book", "books", "书", "本"), ("pencil", "pencils", "铅笔", "支"),
    ("cup", "cups", "杯子", "个"), ("coin", "coins", "硬币", "枚"), ("fish", "fish", "鱼", "条"),
    ("flower", "flowers", "花", "朵"), ("egg", "eggs", "鸡蛋", "个"),
)


# ---------------------------------------------------------------------------
# Pretraining corpus
# ---------------------------------------------------------------------------

def _person(rng: random.Random, lang: str) -> dict[str, str]:
    if lang == "zh":
        n = rng.choice(_ZH_NAMES)
        return {"N": n, "p": n, "P": n, "o": n, "poss": n + "的"}
    name, g = rng.choice(_EN_NAMES)
    p, o, poss = ("he", "him", "his") if g == "m" else ("she", "her", "her")
    return {"N": name, "p": p, "P": p.capitalize(), "o": o, "poss": poss}


def _facts_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    c = rng.choice(world)
    s = _slots(c, lang)
    tpl = _FACT_TEMPLATES[lang]
    attrs = list(tpl)
    k = rng.randint(1, 5)
    chosen = rng.sample(attrs, k)
    sents = [rng.choice(tpl[a]).format(**s) for a in chosen]
    if rng.random() < 0.3:
        intro = {"en": ("Here are some facts about {name}.", "Let us learn about {name}.",
                        "This is a short note about {name}."),
                 "zh": ("下面是关于{name}的一些事实。", "我们来了解一下{name}。", "这是一段关于{name}的介绍。")}
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
        per = _person(rng, lang)
        sing, plur, zh_obj, mw = rng.choice(_OBJECTS)
        if lang == "en":
            def q(n: int) -> str:
                return f"{n} {sing if n == 1 else plur}"
            return rng.choice((
                f"{per['N']} has {q(a)} and gets {b} more, so {per['p']} now has {q(a + b)}.",
                f"If you have {q(a)} and someone gives you {b} more, you have {q(a + b)}.",
                f"{per['N']} had {q(a + b)} and gave away {b}, so {per['p']} has {q(a)} left.",
            ))
        return rng.choice((
            f"{per['N']}有{a}{mw}{zh_obj}，又买了{b}{mw}，现在一共有{a + b}{mw}{zh_obj}。",
            f"如果你有{a}{mw}{zh_obj}，别人又给你{b}{mw}，你就有{a + b}{mw}{zh_obj}。",
            f"{per['N']}原来有{a + b}{mw}{zh_obj}，送出去{b}{mw}，还剩{a}{mw}。",
        ))
    if lang == "en":
        return rng.choice((
            f"{a} {sym} {b} = {c}.",
            f"{_en_num(a).capitalize()} {op_en} {_en_num(b)} equals {_en_num(c)}.",
            f"{a} {op_en} {b} is {c}.",
            f"The result of {a} {sym} {b} is {c}.",
        ))
    return rng.choice((
        f"{a} {sym} {b} = {c}。",
        f"{_zh_num(a)}{op_zh}{_zh_num(b)}等于{_zh_num(c)}。",
        f"{a}{op_zh}{b}等于{c}。",
        f"{a} {sym} {b} 的结果是{c}。",
    ))


def _arith_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    sents = [_arith_sentence(rng, lang) for _ in range(rng.randint(1, 8))]
    return (" " if lang == "en" else "").join(sents)


_STORY = {
    "en": {
        "open": ("{N} lived in {capital}, the capital of {name}.",
                 "{N} grew up in a small village in {name}.",
                 "Last spring, {N} travelled to {name}.",
                 "{N} was a student in {capital}."),
        "mid": ("One morning, {p} walked along the {river}.",
                "{P} bought some {food} at the market.",
                "The weather was {weather}, so {p} {weather_action}.",
                "{P} met an old friend named {N2}.",
                "{N2} told {o} a story about the year {founded}, when {name} was founded.",
                "They paid for lunch with {k} {currency}s.",
                "{P} wrote a letter to {poss} {relative}.",
                "In the afternoon, {p} visited the {place}.",
                "{P} felt {feeling} and {feeling_action}."),
        "close": ("In the evening, {p} went home happy.",
                  "It was a day {p} would never forget.",
                  "The next day, {p} started planning another trip.",
                  "{P} fell asleep early that night."),
    },
    "zh": {
        "open": ("{N}住在{name}的首都{capital}。",
                 "{N}在{name}的一个小村子里长大。",
                 "去年春天，{N}去{name}旅行。",
                 "{N}是{capital}的一名学生。"),
        "mid": ("一天早上，{N}沿着{river}散步。",
                "{N}在市场上买了一些{food}。",
                "{weather}，{N}{weather_action}。",
                "{N}遇到了一个老朋友{N2}。",
                "{N2}给{N}讲了{founded}年{name}建国的故事。",
                "他们用{k}{currency}付了午饭钱。",
                "{N}给{relative}写了一封信。",
                "下午，{N}参观了{place}。",
                "{N}觉得很{feeling}，{feeling_action}。"),
        "close": ("晚上，{N}高高兴兴地回家了。",
                  "这是{N}永远不会忘记的一天。",
                  "第二天，{N}开始计划下一次旅行。",
                  "那天晚上{N}很早就睡了。"),
    },
}
_STORY_WORDS = {
    "weather": (("sunny", "天气很晴朗"), ("rainy", "外面下着雨"), ("windy", "外面刮着大风"),
                ("cold", "天气很冷"), ("warm", "天气很暖和")),
    "weather_action": (("stayed near the window", "待在窗边"), ("took a long walk", "出去散了很久的步"),
                       ("drank hot tea", "喝了一杯热茶"), ("read a book", "读了一本书")),
    "place": (("library", "图书馆"), ("museum", "博物馆"), ("harbour", "港口"), ("old bridge", "老桥"),
              ("night market", "夜市"), ("school", "学校"), ("park", "公园"), ("train station", "火车站")),
    "feeling": (("happy", "开心"), ("tired", "累"), ("curious", "好奇"), ("calm", "平静"), ("excited", "兴奋")),
    "feeling_action": (("started to sing", "于是唱起了歌"), ("decided to rest early", "决定早点休息"),
                       ("called a friend", "给朋友打了个电话"), ("wrote about the day in a diary", "在日记里写下了这一天")),
    "relative": (("sister", "姐姐"), ("brother", "哥哥"), ("grandmother", "奶奶"), ("teacher", "老师"),
                 ("cousin", "表哥")),
}


def _story_doc(rng: random.Random, world: list[Country], lang: str, country: Country | None = None) -> str:
    li = 0 if lang == "en" else 1
    c = rng.choice(world) if country is None else country
    s = _slots(c, lang)
    s.update(_person(rng, lang))
    s["N2"] = s["N"]
    while s["N2"] == s["N"]:
        s["N2"] = _person(rng, lang)["N"]
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
    (("make {food}", "做{food}"), (
        ("wash the ingredients", "把食材洗干净"),
        ("cut everything into small pieces", "把所有东西切成小块"),
        ("heat some oil in a pan", "在锅里倒一点油加热"),
        ("add a pinch of salt", "加一点盐"),
        ("cook it for {m} minutes", "煮{m}分钟"),
        ("taste it and adjust the flavour", "尝一尝再调整味道"),
        ("serve it while it is hot", "趁热端上桌"))),
    (("plant a tree", "种一棵树"), (
        ("choose a sunny place", "选一个阳光充足的地方"),
        ("dig a hole about {m} centimetres deep", "挖一个大约{m}厘米深的坑"),
        ("put the young tree in the hole", "把小树放进坑里"),
        ("fill the hole with soil", "用土把坑填满"),
        ("water it well", "浇足水"),
        ("check it again after {d} days", "{d}天后再去看看"))),
    (("send a letter to {capital}", "给{capital}寄一封信"), (
        ("write the letter", "写好信"),
        ("fold it and put it in an envelope", "把信折好放进信封"),
        ("write an address in {capital} on the envelope", "在信封上写上{capital}的地址"),
        ("buy a stamp", "买一张邮票"),
        ("take it to the post office", "把信送到邮局"))),
    (("train a small language model", "训练一个小型语言模型"), (
        ("collect and clean the text data", "收集并清洗文本数据"),
        ("train a tokenizer", "训练一个分词器"),
        ("pack the tokens into blocks of {n} tokens", "把词元拼接成每块{n}个词元"),
        ("set a small learning rate", "设置一个较小的学习率"),
        ("train for {d} epochs", "训练{d}个轮次"),
        ("evaluate the model on held-out data", "在留出数据上评估模型"),
        ("save the checkpoint", "保存检查点"))),
    (("clean an instruction dataset", "清洗一个指令数据集"), (
        ("remove exact duplicates", "删除完全重复的样本"),
        ("normalise the text", "规范化文本"),
        ("filter out very short answers", "过滤掉过短的回答"),
        ("mask e-mail addresses and phone numbers", "遮盖邮箱地址和电话号码"),
        ("check the language of each sample", "检查每条样本的语言"),
        ("save the result as JSONL", "把结果保存为JSONL"))),
    (("prepare for a trip to {name}", "准备去{name}旅行"), (
        ("find {name} on the map", "在地图上找到{name}"),
        ("exchange some money for {currency}s", "换一些{currency}"),
        ("book a room in {capital}", "在{capital}订一个房间"),
        ("learn a few words of the local language", "学几句当地的话"),
        ("pack light clothes", "带几件轻便的衣服"),
        ("plan a walk along the {river}", "计划沿着{river}散步"))),
)


def _howto_parts(rng: random.Random, world: list[Country], lang: str) -> tuple[str, list[str]]:
    li = 0 if lang == "en" else 1
    topic, steps = rng.choice(_HOWTO)
    s = _slots(rng.choice(world), lang)
    s.update(m=str(rng.randint(5, 30)), d=str(rng.randint(2, 9)), n=str(rng.choice((128, 256, 512))))
    k = rng.randint(3, min(5, len(steps)))
    idx = sorted(rng.sample(range(len(steps)), k))
    return topic[li].format(**s), [steps[i][li].format(**s) for i in idx]


def _howto_doc(rng: random.Random, world: list[Country], lang: str) -> str:
    topic, steps = _howto_parts(rng, world, lang)
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
    ("facts", _facts_doc, 40), ("arithmetic", _arith_doc, 20),
    ("story", _story_doc, 25), ("howto", _howto_doc, 15),
)


_QA_TAG = {"en": ("Q: ", "A: "), "zh": ("问：", "答：")}
_QA_FACT = {"en": {"capital": "What is the capital of {name}?", "currency": "What is the currency of {name}?"},
            "zh": {"capital": "{name}的首都是哪里？", "currency": "{name}的货币是什么？"}}
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
    train_items: list[tuple[str, Any, str]] = [("fact", c, k) for c in sp["countries"][0] for k in ("capital", "currency")]
    train_items += [("sum", p, "+") for p in sp["add"][0]] + [("sum", p, "-") for p in sp["sub"][0]]
    docs: list[dict[str, str]] = []
    for lang in ("en", "zh"):
        rng = _rng(seed, f"grounding-{lang}")
        q_tag, a_tag = _QA_TAG[lang]
        for _ in range(_n(_N_GROUNDING["drill"], scale, 2)):
            text = " ".join(f"{a} {op} {b} = {a + b if op == '+' else a - b}." for a, b, op in rng.sample(table, 8))
            docs.append({"text": text, "lang": lang, "source": "drill"})
        for _ in range(_n(_N_GROUNDING["qa"], scale, 2)):
            lines = []
            for kind, x, k in rng.sample(train_items, 6):
                if kind == "fact":
                    sl = _slots(x, lang)
                    lines.append(f"{q_tag}{_QA_FACT[lang][k].format(**sl)}\n{a_tag}{sl[k]}")
                else:
                    a, b = x
                    lines.append(f"{q_tag}{a} {k} {b}\n{a_tag}{a + b if k == '+' else a - b}")
            docs.append({"text": "\n".join(lines), "lang": lang, "source": "qa"})
        for _ in range(_n(_N_GROUNDING["spelling"], scale, 2)):
            parts = []
            for w in rng.sample(_WORDS, 6):
                if lang == "en":
                    parts.append(f"The word {w} starts with the letter {w[0]}." if rng.random() < 0.5
                                 else f"{w} is spelled {' '.join(w)}.")
                else:
                    parts.append(f"单词{w}的首字母是{w[0]}。" if rng.random() < 0.5 else f"{w}的拼写是{' '.join(w)}。")
            docs.append({"text": (" " if lang == "en" else "").join(parts), "lang": lang, "source": "spelling"})
        for _ in range(_n(_N_GROUNDING["qa_letters"], scale, 2)):
            text = "\n".join(f"{q_tag}{_QA_LETTER[lang].format(w=w)}\n{a_tag}{w[0]}"
                             for w in rng.sample(sp["words"][0], 6))
            docs.append({"text": text, "lang": lang, "source": "qa"})
    return docs


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def make_pretrain_corpus(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, str]]:
    """Pretraining documents ``{"text", "lang", "source"}``, about half zh / half en by bytes."""
    world = build_world(seed)
    target = _n(_PRETRAIN_BYTES, scale, 1000) // 2
    names = [s[0] for s in _PRETRAIN_SOURCES]
    weights = [s[2] for s in _PRETRAIN_SOURCES]
    fns = {s[0]: s[1] for s in _PRETRAIN_SOURCES}
    docs: list[dict[str, str]] = []
    for lang in ("en", "zh"):
        rng = _rng(seed, f"pretrain-{lang}")
        size = 0
        while size < target:
            src = rng.choices(names, weights)[0]
            row = {"text": fns[src](rng, world, lang), "lang": lang, "source": src}
            docs.append(row)
            size += len(_dumps(row).encode("utf-8")) + 1
    docs += _grounding_docs(seed, scale)
    _rng(seed, "pretrain-shuffle").shuffle(docs)
    return docs


# ---------------------------------------------------------------------------
# Checkable tasks
# ---------------------------------------------------------------------------

_TASK_INSTR: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {
        "en": ("Add the two numbers.", "What is the sum?", "Compute the sum of the two numbers.",
               "Calculate the result."),
        "zh": ("计算两个数的和。", "求和。", "请算出结果。", "两个数相加等于多少？"),
    },
    "sub": {
        "en": ("Subtract the second number from the first.", "What is the difference?",
               "Compute the result of the subtraction.", "Calculate the result."),
        "zh": ("计算两个数的差。", "求差。", "请算出减法的结果。", "相减等于多少？"),
    },
    "first_letter": {
        "en": ("What is the first letter of the word? Answer with one letter.",
               "Give the first letter of this word.", "Which letter does this word start with?"),
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


def task_prompt(row: dict[str, Any]) -> str:
    """User-facing prompt of a task row: instruction, then input on a new line if present."""
    return row["instruction"] + ("\n" + row["input"] if row.get("input") else "")


def _holdout(items: list[Any], rng: random.Random, frac_num: int = 1, frac_den: int = 5) -> tuple[list[Any], list[Any]]:
    items = list(items)
    rng.shuffle(items)
    n_test = (len(items) * frac_num) // frac_den
    return items[n_test:], items[:n_test]


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
                        rows.append(dict(task=task, lang=lang, instruction=ins,
                                         input=inp.format(a=a, b=b), output=reply, answer=ans))
            elif task == "first_letter":
                for ins in _TASK_INSTR[task][lang]:
                    rows.append(dict(task=task, lang=lang, instruction=ins, input=key, output=key[0], answer=key[0]))
            else:  # capital, currency: the reply restates the corpus' fact sentence
                s = _slots(key, lang)
                if task == "capital":
                    qs = _CAPITAL_Q_TRAIN[lang] + (_CAPITAL_Q_TEST[lang] if split == "test" else ())
                else:
                    qs = _CURRENCY_Q[lang]
                for ins in _TASK_INSTR[task][lang]:
                    for q in qs:
                        rows.append(dict(task=task, lang=lang, instruction=ins, input=q.format(name=s["name"]),
                                         output=_FACT_REPLY[task][lang].format(**s), answer=s[task]))
    return rows


def task_splits(seed: int = DEFAULT_SEED) -> dict[str, tuple[list[Any], list[Any]]]:
    """``{kind: (train, test)}`` for ``add`` / ``sub`` operand pairs, ``words`` and ``countries``.

    The one place the held-out items are chosen: the tasks, the chat rows, the Alpaca and preference files and the
    corpus' question-answer pages all read it, so a test item is asked in no train file.
    """
    rng = _rng(seed, "tasks-split")
    add = _holdout([(a, b) for a in range(10) for b in range(10)], rng)
    sub = _holdout([(a, b) for a in range(20) for b in range(a + 1)], rng)
    words = _holdout(sorted(_WORDS), rng)
    countries = _holdout(build_world(seed), rng)
    return {"add": add, "sub": sub, "words": words, "countries": countries}


def make_tasks(seed: int = DEFAULT_SEED, scale: float = 1.0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return ``(train, test)`` checkable-task rows with held-out test prompts.

    Held out: add/sub operand pairs, first_letter words, capital/currency countries (see ``task_splits``).
    """
    sp = task_splits(seed)
    keys = {"add": sp["add"], "sub": sp["sub"], "first_letter": sp["words"], "capital": sp["countries"],
            "currency": sp["countries"]}
    out = []
    for si, (split, total) in enumerate((("train", _n(_N_TASKS_TRAIN, scale, 10)),
                                         ("test", _n(_N_TASKS_TEST, scale, 10)))):
        srng = _rng(seed, f"tasks-{split}")
        rows: list[dict[str, str]] = []
        for ti, task in enumerate(TASK_TYPES):
            n = total // len(TASK_TYPES) + (1 if ti < total % len(TASK_TYPES) else 0)
            cands = _task_candidates(task, keys[task][si], split)
            rows.extend(srng.sample(cands, min(n, len(cands))))
        srng.shuffle(rows)
        prefix = "tr" if split == "train" else "te"
        out.append([{"id": f"{prefix}{i + 1:05d}", **r} for i, r in enumerate(rows)])
    return out[0], out[1]


#: Gold replies of the fact tasks: the corpus' own sentence, so the model answers along the route it learned the
#: fact by (``The capital of X is`` -> Y) instead of a new country -> city table fitted in SFT.
_FACT_REPLY: dict[str, dict[str, str]] = {
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
    if task in _FACT_REPLY:  # a restated reply ("The capital of X is Y.") -> "Y"
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


# ---------------------------------------------------------------------------
# Instruction data (Alpaca) with injected dirt
# ---------------------------------------------------------------------------

_GLOSSARY: tuple[tuple[str, str, str, str], ...] = (
    ("a tokenizer", "分词器",
     "A tokenizer splits text into small units called tokens and maps each token to an integer id. The model only ever sees these ids.",
     "分词器把文本切分成称为词元的小单位，并把每个词元映射为一个整数编号。模型看到的只是这些编号。"),
    ("the learning rate", "学习率",
     "The learning rate controls how big each update step of the weights is. Too large a value makes training unstable; too small a value makes it slow.",
     "学习率决定每次更新权重时步子迈多大。太大训练会不稳定，太小训练会很慢。"),
    ("overfitting", "过拟合",
     "Overfitting means the model memorises the training data and does worse on new data. A growing gap between training and validation loss is a typical sign.",
     "过拟合是指模型记住了训练数据，在新数据上表现变差。训练损失和验证损失的差距越来越大是典型信号。"),
    ("the batch size", "批大小",
     "The batch size is the number of samples processed together in one step. Larger batches give smoother gradients but need more memory.",
     "批大小是一步中一起处理的样本数量。批越大梯度越平滑，但需要更多显存。"),
    ("LoRA", "LoRA",
     "LoRA freezes the original weights and learns a low-rank update made of two small matrices. Only these small matrices are trained.",
     "LoRA冻结原始权重，只学习由两个小矩阵组成的低秩增量。训练时只更新这两个小矩阵。"),
    ("gradient accumulation", "梯度累积",
     "Gradient accumulation adds up gradients over several small batches before one optimizer step. It simulates a larger batch without more memory.",
     "梯度累积把几个小批次的梯度加起来，再做一次优化器更新。它用较少的显存模拟更大的批。"),
    ("a loss function", "损失函数",
     "A loss function measures how wrong the model's predictions are. Training tries to make this number smaller.",
     "损失函数衡量模型的预测错得有多厉害。训练的目标就是让这个数变小。"),
    ("an epoch", "轮次",
     "An epoch is one full pass over the training data. Small datasets are often trained for several epochs.",
     "一个轮次是把训练数据完整地过一遍。小数据集通常会训练好几个轮次。"),
    ("a validation set", "验证集",
     "A validation set is data held out from training and used to check the model during training. It must not overlap with the training data.",
     "验证集是从训练中留出来的数据，用来在训练过程中检查模型。它不能和训练数据重叠。"),
    ("mixed precision", "混合精度",
     "Mixed precision runs most computations in 16-bit numbers while keeping a 32-bit copy of the weights. It saves memory and time.",
     "混合精度用16位数做大部分计算，同时保留一份32位的权重副本。这样可以节省显存和时间。"),
    ("a chat template", "对话模板",
     "A chat template turns a list of messages into one string with role markers. Training and inference must use the same template.",
     "对话模板把一组消息拼成带有角色标记的一个字符串。训练和推理必须使用同一个模板。"),
    ("label masking", "标签掩码",
     "Label masking sets the labels of prompt tokens to -100 so that the loss is only computed on the answer tokens.",
     "标签掩码把提示部分词元的标签设为-100，这样损失只在回答部分计算。"),
    ("deduplication", "去重",
     "Deduplication removes repeated samples from a dataset. Repeated samples waste compute and can make the model memorise them.",
     "去重就是删除数据集中重复的样本。重复样本浪费算力，还会让模型死记硬背。"),
    ("a checkpoint", "检查点",
     "A checkpoint is a saved copy of the model weights and training state. It lets you resume training or evaluate later.",
     "检查点是保存下来的模型权重和训练状态。有了它可以继续训练或稍后评估。"),
    ("perplexity", "困惑度",
     "Perplexity is the exponential of the average token loss. Lower perplexity means the model is less surprised by the text.",
     "困惑度是平均词元损失的指数。困惑度越低，说明模型对文本越不意外。"),
    ("a reward model", "奖励模型",
     "A reward model gives a score to an answer. It is trained on pairs where one answer is preferred over the other.",
     "奖励模型给一个回答打分。它用成对数据训练，每对里有一个回答更受偏好。"),
)


def _alpaca_clean_candidates(rng: random.Random, world: list[Country], lang: str) -> dict[str, Any]:
    """One random clean Alpaca row (may repeat; caller de-duplicates)."""
    cat = rng.choice(("qa_world", "qa_world", "list", "explain", "rewrite", "translate",
                      "math", "howto", "story"))
    c = rng.choice(world)
    s = _slots(c, lang)
    en = lang == "en"
    if cat == "qa_world":
        attr = rng.choice(("capital", "currency", "river", "founded", "food"))
        q = {
            "capital": ("What is the capital of {name}?", "{name}的首都是哪里？"),
            "currency": ("What currency is used in {name}?", "{name}使用什么货币？"),
            "river": ("Which river flows through {name}?", "哪条河流经{name}？"),
            "founded": ("When was {name} founded?", "{name}是哪一年建立的？"),
            "food": ("What is a famous dish of {name}?", "{name}有什么有名的美食？"),
        }[attr][0 if en else 1]
        ans = rng.choice(_FACT_TEMPLATES[lang][attr]).format(**s)
        return dict(instruction=q.format(**s), input="", output=ans, category=cat)
    if cat == "list":
        attrs = rng.sample(list(_FACT_TEMPLATES[lang]), 3)
        lines = [f"{i + 1}. {_FACT_TEMPLATES[lang][a][0].format(**s)}" for i, a in enumerate(attrs)]
        ins = rng.choice(("List three facts about {name}.", "Give me three facts about {name}.") if en
                         else ("列出关于{name}的三个事实。", "请给出{name}的三条信息。")).format(**s)
        return dict(instruction=ins, input="", output="\n".join(lines), category=cat, _key=("list", c.id, lang))
    if cat == "explain":
        term_en, term_zh, def_en, def_zh = rng.choice(_GLOSSARY)
        if en:
            ins = rng.choice(("Explain what {t} is.", "Briefly explain {t}.", "What is {t} in machine learning?"))
            return dict(instruction=ins.format(t=term_en), input="", output=def_en, category=cat,
                        _key=("explain", term_en))
        ins = rng.choice(("解释一下什么是{t}。", "简要说明{t}。", "{t}是什么意思？"))
        return dict(instruction=ins.format(t=term_zh), input="", output=def_zh, category=cat,
                    _key=("explain", term_zh + "/zh"))
    if cat == "rewrite":
        if rng.random() < 0.5:
            if en:
                inp = f"country: {s['name']}; capital: {s['capital']}; currency: {s['currency']}"
                out = f"{s['name']} has its capital in {s['capital']} and uses the {s['currency']}."
                ins = "Combine the following facts into one sentence."
            else:
                inp = f"国家：{s['name']}；首都：{s['capital']}；货币：{s['currency']}"
                out = f"{s['name']}的首都是{s['capital']}，使用的货币是{s['currency']}。"
                ins = "把下面的信息合并成一句话。"
        else:
            if en:
                inp = f"The capital of {s['name']} is {s['capital']}."
                out = f"Is {s['capital']} the capital of {s['name']}?"
                ins = "Rewrite the sentence as a yes/no question."
            else:
                inp = f"{s['name']}的首都是{s['capital']}。"
                out = f"{s['name']}的首都是{s['capital']}吗？"
                ins = "把下面的句子改写成一般疑问句。"
        return dict(instruction=ins, input=inp, output=out, category=cat)
    if cat == "translate":
        pe, pz = rng.choice(_PARALLEL_FACTS)
        vals = asdict(c)
        e, z = pe.format(**vals), pz.format(**vals)
        if en:
            return dict(instruction="Translate the following sentence into Chinese.", input=e, output=z, category=cat)
        return dict(instruction="把下面的句子翻译成英文。", input=z, output=e, category=cat)
    if cat == "math":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        sing, plur, zh_obj, mw = rng.choice(_OBJECTS)
        per = _person(rng, lang)
        if en:
            ins = f"{per['N']} has {a} {plur} and buys {b} more. How many {plur} does {per['p']} have now?"
            out = f"{per['P']} has {a} + {b} = {a + b} {plur}."
        else:
            ins = f"{per['N']}有{a}{mw}{zh_obj}，又买了{b}{mw}。现在一共有多少{mw}？"
            out = f"一共有{a} + {b} = {a + b}{mw}{zh_obj}。"
        return dict(instruction=ins, input="", output=out, category=cat)
    if cat == "howto":
        topic, steps = _howto_parts(rng, world, lang)
        if en:
            ins = rng.choice(("How do I {t}?", "Explain how to {t}.", "List the steps to {t}.")).format(t=topic)
            out = "\n".join(f"{i + 1}. {st[0].upper()}{st[1:]}." for i, st in enumerate(steps))
        else:
            ins = rng.choice(("怎样{t}？", "说明如何{t}。", "列出{t}的步骤。")).format(t=topic)
            out = "\n".join(f"{i + 1}. {st}。" for i, st in enumerate(steps))
        return dict(instruction=ins, input="", output=out, category=cat)
    # story
    story = _story_doc(rng, world, lang, country=c)
    ins = rng.choice(("Write a short story set in {name}.", "Tell me a short story about a trip to {name}.")
                     if en else ("写一个发生在{name}的小故事。", "讲一个去{name}旅行的小故事。"))
    return dict(instruction=ins.format(**s), input="", output=story, category="story")


_NEAR_WORD_SWAPS_EN = ((" is ", " was "), (" the ", " a "), (" and ", " & "), (" has ", " had "))
_NEAR_WORD_SWAPS_ZH = (("是", "为"), ("一些", "几个"), ("很", "非常"), ("有名", "著名"))
_WRONG_LANG = (
    ("ja", "{a}たす{b}はいくつですか？", "{a}たす{b}は{c}です。"),
    ("ru", "Сколько будет {a} плюс {b}?", "{a} плюс {b} будет {c}."),
    ("ko", "{a} 더하기 {b}의 값은 얼마인가요?", "{a} 더하기 {b}의 값은 {c}입니다."),
)
_DIRTY_FRACTIONS: dict[str, tuple[int, int]] = {  # kind -> (numerator, denominator) of total rows
    "exact_duplicate": (3, 100), "near_duplicate": (3, 100), "empty_output": (3, 200),
    "too_short": (3, 200), "pii": (3, 100), "mojibake": (2, 100), "nfkc": (3, 100),
    "banned_word": (2, 100), "wrong_language": (3, 200),
}


def _mojibake(text: str, codec: str) -> str:
    data = text.encode("utf-8")
    if codec == "gbk":
        return data.decode("gbk", errors="replace")
    out = []
    for b in data:  # "sloppy" cp1252: undefined bytes fall back to latin-1
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if ("!" <= ch <= "~" and ch.isalnum()) else ch for ch in text)


def _make_alpaca(seed: int, scale: float) -> tuple[list[dict[str, str]], dict[str, Any]]:
    world = task_splits(seed)["countries"][0]  # held-out countries are asked about in no train file
    rng = _rng(seed, "alpaca")
    total = _n(_N_ALPACA, scale, 40)
    counts = {k: max(1, (total * a) // b) for k, (a, b) in _DIRTY_FRACTIONS.items()}
    n_base = total - counts["exact_duplicate"] - counts["near_duplicate"]
    test_prompts = {task_prompt(r) for r in make_tasks(seed, 1.0)[1]}

    base: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(base) < n_base:
        attempts += 1
        if attempts > 200 * n_base + 10_000:
            raise RuntimeError("could not build enough unique alpaca rows")
        lang = "en" if len(base) % 2 == 0 else "zh"
        row = _alpaca_clean_candidates(rng, world, lang)
        keys = [(row["instruction"], row["input"]), row.get("_key", ("output", row["output"]))]
        if any(k in seen for k in keys) or task_prompt(row) in test_prompts:
            continue
        seen.update(keys)
        base.append({"instruction": row["instruction"], "input": row["input"],
                     "output": row["output"], "category": row["category"], "_lang": lang})
    rng.shuffle(base)

    # choose which base rows get which in-place dirt; duplicate sources stay clean
    zh_idx = [i for i, r in enumerate(base) if not r["output"].isascii()]
    moj = rng.sample(zh_idx, counts["mojibake"])
    taken = set(moj)
    rest = [i for i in range(n_base) if i not in taken]
    rng.shuffle(rest)
    assign: dict[int, str] = {i: "mojibake" for i in moj}
    pos = 0
    for kind in ("exact_duplicate", "near_duplicate", "empty_output", "too_short", "pii", "nfkc",
                 "banned_word", "wrong_language"):
        for i in rest[pos:pos + counts[kind]]:
            assign[i] = kind
        pos += counts[kind]

    details: dict[int, dict[str, Any]] = {}
    extra: list[tuple[int, dict[str, str], dict[str, Any]]] = []  # (source index, row, detail)
    wl_used: set[tuple[int, int]] = set()
    for i in sorted(assign):
        kind = assign[i]
        r = base[i]
        en = r["_lang"] == "en"
        if kind == "exact_duplicate":
            extra.append((i, dict(r), {"kind": kind}))
        elif kind == "near_duplicate":
            nr = dict(r)
            change = rng.choice(("punct", "word", "case_space"))
            field = "output"
            if change == "word":
                swaps = _NEAR_WORD_SWAPS_EN if en else _NEAR_WORD_SWAPS_ZH
                ok = [(a, b) for a, b in swaps if a in nr[field]]
                if ok:
                    a, b = rng.choice(ok)
                    nr[field] = nr[field].replace(a, b, 1)
                else:
                    change = "punct"
            if change == "case_space":
                if en:
                    nr["instruction"] = nr["instruction"][0].lower() + nr["instruction"][1:] + " "
                    nr[field] = nr[field].replace(" ", "  ", 1)
                else:
                    nr["instruction"] = " " + nr["instruction"]
                    nr[field] = nr[field].rstrip("。") + "！"
            if change == "punct":
                o = nr[field]
                if o.endswith((".", "。", "?", "？")):
                    nr[field] = o[:-1] + ("!" if en else "！")
                else:
                    nr[field] = o + ("!" if en else "！")
            assert nr != r
            extra.append((i, nr, {"kind": kind, "change": change}))
        elif kind == "empty_output":
            r["output"] = rng.choice(("", " ", "\n", "  \t"))
            details[i] = {"kind": kind}
        elif kind == "too_short":
            r["output"] = rng.choice(("ok", "Yes", ".", "no") if en else ("好", "是", "嗯", "对"))
            details[i] = {"kind": kind}
        elif kind == "pii":
            user = rng.choice(("zhang.wei", "li.na", "mia.lee", "tom_k", "wang88", "support", "liuyang"))
            email = f"{user}{rng.randint(1, 99)}@{rng.choice(('example.com', 'example.org', 'example.net'))}"
            style = rng.choice(("cn_dash", "cn_plain", "cn_plus86", "us", "uk"))
            d4 = lambda: f"{rng.randint(0, 9999):04d}"  # noqa: E731
            pre = f"1{rng.choice('3456789')}{rng.randint(0, 9)}"
            phone = {"cn_dash": f"{pre}-{d4()}-{d4()}", "cn_plain": f"{pre}{d4()}{d4()}",
                     "cn_plus86": f"+86 {pre} {d4()} {d4()}",
                     "us": f"+1 415-555-01{rng.randint(0, 99):02d}",
                     "uk": f"+44 20 7946 0{rng.randint(0, 999):03d}"}[style]
            if en:
                r["output"] += f" If you have questions, e-mail me at {email} or call {phone}."
            else:
                r["output"] += f"有问题可以发邮件到{email}，或者打电话{phone}。"
            details[i] = {"kind": kind, "emails": [email], "phones": [phone]}
        elif kind == "mojibake":
            codec = "gbk" if rng.random() < 0.3 else "cp1252"
            r["output"] = _mojibake(r["output"], codec)
            details[i] = {"kind": kind, "codec": f"utf-8 decoded as {codec}"}
        elif kind == "nfkc":
            change = rng.choice(("fullwidth", "ideographic_space", "nbsp", "padding"))
            if change == "fullwidth":
                tgt = "instruction" if en else "output"
                before = r[tgt]
                r[tgt] = _fullwidth(before)
                if r[tgt] == before:  # nothing to widen (e.g. no digits in a zh output)
                    change = "padding"
            if change == "ideographic_space":
                r["instruction"] = "\u3000" + r["instruction"].replace(" ", "\u3000", 1) + "\u3000"
            elif change == "nbsp":
                r["output"] = "\u00a0" + r["output"].replace(" ", "\u00a0 ", 1) + "\u00a0"
            elif change == "padding":
                r["instruction"] = "  " + r["instruction"] + " \t"
                r["output"] = "\n " + r["output"] + "   "
            details[i] = {"kind": kind, "change": change}
        elif kind == "banned_word":
            if en:
                w = rng.choice([x for x in BANNED_WORDS if x.isascii()])
                r["output"] += f" Also, visit the best {w} site today for free money!"
            else:
                w = rng.choice([x for x in BANNED_WORDS if not x.isascii()])
                r["output"] += f"另外，{w}平台送免费奖金，快来！"
            details[i] = {"kind": kind, "word": w}
        elif kind == "wrong_language":
            code, q, a_tpl = rng.choice(_WRONG_LANG)
            while True:
                a, b = rng.randint(2, 50), rng.randint(2, 50)
                if (a, b) not in wl_used:
                    wl_used.add((a, b))
                    break
            r.update(instruction=q.format(a=a, b=b), input="", output=a_tpl.format(a=a, b=b, c=a + b),
                     category="math")
            details[i] = {"kind": kind, "language": code}

    # order: base rows keep their order; duplicates go somewhere after their source
    keyed: list[tuple[tuple[int, int, int], dict[str, str], dict[str, Any] | None, int | None]] = []
    for i, r in enumerate(base):
        keyed.append(((i, 0, 0), r, details.get(i), None))
    for k, (src, r, det) in enumerate(extra):
        keyed.append(((rng.randint(src, n_base - 1), 1, k), r, det, src))
    keyed.sort(key=lambda t: t[0])
    rows: list[dict[str, str]] = []
    id_of_base: dict[int, str] = {}
    for n, (key, _r, _det, _src) in enumerate(keyed):
        rid = f"alp-{n + 1:05d}"
        if key[1] == 0:
            id_of_base[key[0]] = rid
    kinds: dict[str, list[str]] = {k: [] for k in DIRTY_KINDS}
    det_out: dict[str, dict[str, Any]] = {}
    for n, (_key, r, det, src) in enumerate(keyed):
        rid = f"alp-{n + 1:05d}"
        rows.append({"id": rid, "instruction": r["instruction"], "input": r["input"],
                     "output": r["output"], "category": r["category"]})
        if det is not None:
            det = dict(det)
            if src is not None:
                det["of"] = id_of_base[src]
            kinds[det["kind"]].append(rid)
            det_out[rid] = det
    manifest = {
        "description": "Ids of the dirty rows injected into alpaca_raw.jsonl, by kind. "
                       "Rows not listed are clean. 'of' names the original of a duplicate "
                       "(the original always comes first in the file).",
        "seed": seed,
        "n_rows": len(rows),
        "n_clean": len(rows) - sum(len(v) for v in kinds.values()),
        "banned_words": list(BANNED_WORDS),
        "kinds": kinds,
        "details": det_out,
    }
    return rows, manifest


def make_alpaca_raw(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, str]]:
    """Alpaca rows ``{id, instruction, input, output, category}`` including injected dirty rows."""
    return _make_alpaca(seed, scale)[0]


def dirty_manifest(seed: int = DEFAULT_SEED, scale: float = 1.0) -> dict[str, Any]:
    """Which alpaca ids carry which kind of dirt (same content as ``alpaca_raw_manifest.json``)."""
    return _make_alpaca(seed, scale)[1]


# ---------------------------------------------------------------------------
# Chat data (messages / ShareGPT)
# ---------------------------------------------------------------------------

_SYSTEM = {
    "en": ("You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
           "You are a friendly tutor who knows the geography of the fictional world.",
           "Answer every question accurately and keep the answer short."),
    "zh": ("你是一个乐于助人的助手。", "你是一个简洁的助手，回答要简短。",
           "你是一位熟悉虚构世界地理的老师。", "请准确回答每个问题，答案尽量简短。"),
}
_WORLD_QA = {
    "en": (("currency", "What currency is used in {name}?", "The currency of {name} is the {currency}."),
           ("river", "Which river flows through {name}?", "The {river} flows through {name}."),
           ("founded", "When was {name} founded?", "{name} was founded in {founded}."),
           ("food", "What should I eat in {name}?", "Try {food}, a famous dish of {name}."),
           ("about", "Tell me about {name}.", "The capital of {name} is {capital}. Its currency is the {currency}, "
                                              "and the {river} flows through it.")),
    "zh": (("currency", "{name}使用什么货币？", "{name}的货币是{currency}。"),
           ("river", "哪条河流经{name}？", "{river}流经{name}。"),
           ("founded", "{name}是哪一年建立的？", "{name}建立于{founded}年。"),
           ("food", "在{name}应该吃什么？", "可以尝尝{food}，这是{name}的名菜。"),
           ("about", "介绍一下{name}。", "{name}的首都是{capital}，货币是{currency}，{river}流经这个国家。")),
}


def _chat_rounds(rng: random.Random, world: list[Country], by_lang: dict[str, list[dict[str, str]]],
                 lang: str) -> list[dict[str, str]]:
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
            s = _slots(rng.choice(world), lang)
            msgs.append({"role": "user", "content": q.format(**s)})
            msgs.append({"role": "assistant", "content": a.format(**s)})
    return msgs


def _chat_rows(seed: int, stream: str, n: int) -> list[tuple[str, list[dict[str, str]]]]:
    world = task_splits(seed)["countries"][0]  # held-out countries are asked about in no train file
    train, _ = make_tasks(seed, 1.0)
    by_lang = {lang: [t for t in train if t["lang"] == lang] for lang in ("en", "zh")}
    rng = _rng(seed, stream)
    out: list[tuple[str, list[dict[str, str]]]] = []
    seen: set[str] = set()
    while len(out) < n:
        lang = rng.choice(("en", "zh"))
        msgs = _chat_rounds(rng, world, by_lang, lang)
        key = _dumps(msgs)
        if key in seen:
            continue
        seen.add(key)
        out.append((lang, msgs))
    return out


def make_sft_messages(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, Any]]:
    """Multi-turn ``{"id", "lang", "messages"}`` rows built from tasks_train and world facts."""
    rows = _chat_rows(seed, "sft", _n(_N_SFT, scale, 10))
    return [{"id": f"sft-{i + 1:05d}", "lang": lang, "messages": m} for i, (lang, m) in enumerate(rows)]


def make_sharegpt(seed: int = DEFAULT_SEED, scale: float = 1.0) -> list[dict[str, Any]]:
    """ShareGPT rows ``{"id", "conversations": [{"from": system|human|gpt, "value"}]}``."""
    role_map = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = _chat_rows(seed, "sharegpt", _n(_N_SHAREGPT, scale, 5))
    return [{"id": f"sg-{i + 1:04d}",
             "conversations": [{"from": role_map[m["role"]], "value": m["content"]} for m in msgs]}
            for i, (_, msgs) in enumerate(rows)]


# ---------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------

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
            cand = rng.choice((w[-1], w[1] if len(w) > 1 else "x", rng.choice("abcdefghijklmnopqrstuvwxyz"),
                               w[0].upper() + w[1:]))
        else:  # the same sentence with another country's capital / currency (or the country's name)
            asked = next(c for c in world if c.get(task, lang) == ans)
            other = _slots(rng.choice(pool), lang)
            wrong = rng.choice((other[task], other[task], other["name"] if task == "capital" else other["capital"]))
            cand = _FACT_REPLY[task][lang].format(**(_slots(asked, lang) | {task: wrong}))
        if not score_answer(task, cand, ans):
            return cand
    raise RuntimeError("no wrong answer found")


_VERBOSE = {
    "en": ("Let me think about this carefully before answering.\nThe answer is {a}.",
           "That is an interesting question! There are many ways to look at it.\nAnyway, it is {a}."),
    "zh": ("让我先仔细想一想这个问题。\n答案是{a}。", "这是个好问题！可以从很多角度来看。\n总之是{a}。"),
}


def make_preference_pairs(seed: int = DEFAULT_SEED, scale: float = 1.0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return ``(train, test)`` pairs ``{id, task, lang, prompt, chosen, rejected, rejected_kind, answer}``.

    Train prompts come from tasks_train only and test prompts from tasks_test only;
    ``score_answer`` accepts every ``chosen`` and rejects every ``rejected``.
    """
    world = build_world(seed)
    train_countries = task_splits(seed)["countries"][0]  # a train pair names no held-out country, not even wrongly
    train, test = make_tasks(seed, 1.0)
    out = []
    for split, src, n in (("train", train, _n(_N_PREF_TRAIN, scale, 10)), ("test", test, _n(_N_PREF_TEST, scale, 5))):
        pool = train_countries if split == "train" else world
        rng = _rng(seed, f"pref-{split}")
        picked = rng.sample(src, min(n, len(src)))
        rows = []
        for i, t in enumerate(picked):
            if rng.random() < 0.15:
                rej = rng.choice(_VERBOSE[t["lang"]]).format(a=t["answer"])
                kind = "verbose"
            else:
                rej = _wrong_answer(rng, t, world, pool)
                kind = "wrong"
            rows.append({"id": f"pref-{split}-{i + 1:05d}", "task": t["task"], "lang": t["lang"],
                         "prompt": task_prompt(t), "chosen": t["output"], "rejected": rej,
                         "rejected_kind": kind, "answer": t["answer"], "source_id": t["id"]})
        out.append(rows)
    return out[0], out[1]


# ---------------------------------------------------------------------------
# Broken files for the error-handling lesson
# ---------------------------------------------------------------------------

#: bad_examples file -> 1-based line numbers that are broken (all other lines are valid).
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


def _bad_example_bytes() -> dict[str, bytes]:
    def j(obj: Any) -> bytes:
        return (_dumps(obj) + "\n").encode("utf-8")

    def a(ins: str, inp: str, out: Any) -> dict[str, Any]:
        return {"instruction": ins, "input": inp, "output": out}

    ok1 = a("Add the two numbers. Answer with the number only.", "3 + 4", "7")
    ok2 = a("把这个英文单词改成大写。", "apple", "APPLE")
    ok3 = a("Translate the following sentence into Chinese.", "Good morning.", "早上好。")
    files: dict[str, bytes] = {}
    files["broken_line.jsonl"] = (j(ok1) + j(ok2)
                                  + b'{"instruction": "Give the first letter of this word.", "input": "river", "output": "r"\n'
                                  + j(ok3) + j(a("计算两个数的差，只回答数字。", "9 - 5", "4")))
    files["missing_field.jsonl"] = (j(ok1) + j({"instruction": "Convert the word to uppercase.", "input": "moon"})
                                    + j(ok2) + j({"input": "12 + 5", "output": "17"}) + j(ok3))
    files["wrong_type.jsonl"] = (j(a("Add the two numbers.", "5 + 7", 12)) + j(ok2)
                                 + j(a("List two colours.", "", ["red", "blue"]))
                                 + j({"instruction": None, "input": "sun", "output": "SUN"}) + j(ok3))
    files["empty_field.jsonl"] = (j(ok1) + j(a("Write the word in capital letters.", "star", ""))
                                  + j(a("   ", "lake", "LAKE")) + j(ok2)
                                  + j(a("解释一下什么是学习率。", "", "")))
    files["non_utf8.jsonl"] = (j(ok1)
                               + b'{"instruction": "Convert the word to uppercase.", "input": "tree", "output": "TR\xff\xfeEE"}\n'
                               + j(ok2)
                               + '{"instruction": "翻译成英文。", "input": "你好", "output": "Hello"}\n'.encode("gbk"))

    def m(*pairs: tuple[str | None, str]) -> dict[str, Any]:
        msgs = [({"role": r, "content": c} if r is not None else {"content": c}) for r, c in pairs]
        return {"messages": msgs}

    good1 = m(("system", "You are a helpful assistant."), ("user", "What is 2 + 3?"), ("assistant", "5"))
    good2 = m(("user", "把这个英文单词改成大写。\ncat"), ("assistant", "CAT"))
    files["bad_roles.jsonl"] = (j(good1) + j(m(("user", "Hi!"), ("bot", "Hello! How can I help?")))
                                + j(m(("Human", "What is 4 + 4?"), ("assistant", "8"))) + j(good2)
                                + j(m(("user", "Name a colour."), (None, "Blue."))))
    files["no_assistant.jsonl"] = (j(m(("system", "You are a helpful assistant."), ("user", "What is 6 + 1?")))
                                   + j(good2)
                                   + j(m(("user", "Hello"), ("user", "Are you there?")))
                                   + j(m(("system", "你是一个乐于助人的助手。")))
                                   + j(good1))
    return files


# ---------------------------------------------------------------------------
# Writing everything
# ---------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(_dumps(r) + "\n")


def _human_size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f} MB"
    if n >= 1000:
        return f"{n / 1000:.1f} kB"
    return f"{n} B"


_SCHEMAS: dict[str, str] = {
    "pretrain": "`text` str, `lang` \"zh\" or \"en\", `source` \"facts\" / \"arithmetic\" / \"story\" / \"howto\" / \"drill\" / \"qa\" / \"spelling\"",
    "tasks_train": "`id`, `task` (one of TASK_TYPES), `lang`, `instruction`, `input`, `output` (gold text), `answer` (canonical)",
    "tasks_test": "same as tasks_train; held out (see below)",
    "alpaca_raw": "`id`, `instruction`, `input`, `output`, `category` — includes injected dirty rows",
    "alpaca_manifest": "JSON object: `kinds` {kind: [ids]}, `details` {id: {kind, ...}} — the answer key for cleaning",
    "sft_messages": "`id`, `lang`, `messages` [{`role`: system / user / assistant, `content`}], 1–3 rounds",
    "sharegpt": "`id`, `conversations` [{`from`: system / human / gpt, `value`}]",
    "preference_train": "`id`, `task`, `lang`, `prompt`, `chosen`, `rejected`, `rejected_kind` wrong / verbose, `answer`, `source_id`",
    "preference_test": "same as preference_train; built from tasks_test only",
}


def _render_readme(out_dir: Path, paths: dict[str, Path], seed: int, scale: float) -> str:
    table = ["| file | rows | bytes | schema |", "| --- | ---: | ---: | --- |"]
    for key, rel in FILES.items():
        if key == "readme":
            continue
        p = paths[key]
        data = p.read_bytes()
        nbytes = len(data)
        if rel.endswith(".jsonl"):
            rows = str(data.count(b"\n"))
        else:
            rows = "—"
        if key.startswith("bad_"):
            info = BAD_EXAMPLES[Path(rel).name]
            schema = f"{info['format']} form; bad lines {info['bad_lines']}: {info['problem']}"
        else:
            schema = _SCHEMAS[key]
        table.append(f"| `{rel}` | {rows} | {nbytes:,} ({_human_size(nbytes)}) | {schema} |")
    total = sum(p.stat().st_size for k, p in paths.items() if k != "readme")
    scale_arg = "" if scale == 1.0 else f" --scale {scale}"
    seed_arg = f" --seed {seed}"
    from course_utils.data import read_jsonl

    pre, _ = read_jsonl(paths["pretrain"])
    zh_b = sum(len(_dumps(r).encode("utf-8")) + 1 for r in pre if r["lang"] == "zh")
    n_zh = sum(1 for r in pre if r["lang"] == "zh")
    c_train, c_test = task_splits(seed)["countries"]
    n_countries, n_test_countries = len(c_train) + len(c_test), len(c_test)
    return f"""# Sample data (generated)

All files in this folder are **generated by this project** with
`course_utils/datagen.py` from the integer seed `{seed}`. The text is invented by
the generator (a fictional world of {len(build_world(seed))} countries, template sentences, small
arithmetic facts and word lists); **no third-party text** is included.

**Licence: CC0-1.0** (public-domain dedication). You may copy, modify and reuse it freely.

Regenerate (byte-identical for the same seed) from the repository root:

```bash
python scripts/generate_data.py{seed_arg} --out data_samples/{scale_arg}
```

`tests/test_datagen.py` checks that the committed files equal a fresh generation.
Do not edit these files by hand; change the generator and regenerate instead.

Also in this folder but **not** written by the generator (each records the command that made it):
the models trained on these files (`tiny_base/` by `scripts/make_tiny_base.py`, `tiny_sft/` and
`tiny_sft_all_tokens/` by `scripts/sft.py`, each with its `metadata.json`) and the measured records that
notebooks read instead of re-running them (`sft_seed_comparison.json`, `sft_first_steps.json` and
`preference_runs.json` by `scripts/bench_outcomes.py`, `peft_comparison.json` by `scripts/bench_peft.py`).

## Files

Total size (without this README): {total:,} bytes ({_human_size(total)}).

{chr(10).join(table)}

The pretraining corpus has {len(pre):,} documents: {n_zh:,} Chinese, {len(pre) - n_zh:,} English;
Chinese documents make up {zh_b:,} of its bytes.

## What is held out

* `tasks_test.jsonl`: no (instruction, input) prompt of the test split occurs in any train file
  (`tasks_train`, `sft_messages`, `sharegpt_sample`, `alpaca_raw`, `preference_train`).
  * `add`, `sub`: the operand pairs of the test split never occur in train task rows.
  * `first_letter`: the test words never occur in train task rows.
  * `capital`, `currency`: the test **countries** ({n_test_countries} of {n_countries}) are asked about in no train
    file (tasks, chat rows, Alpaca, ShareGPT, preference pairs); three capital phrasings are new as well.
* The pretraining corpus states every fact, test items included, as general knowledge: world facts in
  sentences, the whole small arithmetic table (`drill`), every word's spelling (`spelling`). Its
  question-answer pages (`qa`) ask only about train countries, pairs and words. What a test row
  checks is whether SFT taught the model to answer a question about something it read but was
  never asked about.
* Answers are checked with `course_utils.datagen.score_answer(task, prediction, answer)`.

## Task types (`TASK_TYPES`)

| task | held out in test | example input | example output |
| --- | --- | --- | --- |
| `add` | operand pairs (a, b), 0 ≤ a, b ≤ 9 | `7 + 5` / `7加5` | `12` |
| `sub` | operand pairs (a, b), 0 ≤ b ≤ a ≤ 19 | `14 - 6` / `14减6` | `8` |
| `first_letter` | words | `river` | `r` |
| `capital` | countries (and 3 of 7 phrasings) | `What is the capital of {{country}}?` | `The capital of {{country}} is {{city}}.` (`answer`: the city) |
| `currency` | countries | `What is the currency of {{country}}?` | `The currency of {{country}} is the {{currency}}.` (`answer`: the currency) |

The prompt a model sees is `instruction + "\\n" + input` (`task_prompt(row)`); `output` is the
gold answer text and `answer` the canonical string for `score_answer`.

## The dirty Alpaca file

`alpaca_raw.jsonl` contains injected problems for the cleaning lesson: exact duplicates,
near duplicates (punctuation / one word / case and whitespace changed), empty and too-short
outputs, e-mail addresses and phone numbers (Chinese mobile and international formats,
all on reserved/fake ranges such as example.com), mojibake (UTF-8 bytes decoded as
cp1252 — repairable — or as GBK — not repairable), full-width characters / odd spaces
that NFKC + whitespace normalisation fixes, banned words (`BANNED_WORDS` = {list(BANNED_WORDS)}),
and rows in an unexpected language (Japanese, Russian, Korean; detectable by Unicode script).
`alpaca_raw_manifest.json` lists the ids of every injected row by kind. A duplicate always
comes after its original. Note: blanket NFKC also turns Chinese full-width punctuation
(`，？：`) into ASCII punctuation, which clean rows contain on purpose.

## 中文说明

本目录中的全部数据均由本项目的 `course_utils/datagen.py` 以固定随机种子生成，内容是虚构的
“世界”（国家、首都、货币、河流、美食）、模板句子、简单算术与单词表，不包含任何第三方文本，
以 CC0-1.0 协议发布。使用上面的命令即可逐字节地重新生成。`alpaca_raw.jsonl` 中故意混入了
重复、近似重复、空回答、个人信息、乱码、全角字符、违禁词和其他语言的样本，供数据清洗课使用；
答案见 `alpaca_raw_manifest.json`。`bad_examples/` 中的文件用于练习读取数据时的错误处理。
"""


def generate_all(out_dir: Path, seed: int = DEFAULT_SEED, scale: float = 1.0) -> dict[str, Path]:
    """Write every sample-data file (and README.md) under ``out_dir``; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in FILES.items()}
    _write_jsonl(paths["pretrain"], make_pretrain_corpus(seed, scale))
    tr, te = make_tasks(seed, scale)
    _write_jsonl(paths["tasks_train"], tr)
    _write_jsonl(paths["tasks_test"], te)
    rows, manifest = _make_alpaca(seed, scale)
    _write_jsonl(paths["alpaca_raw"], rows)
    paths["alpaca_manifest"].write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n",
                                        encoding="utf-8", newline="\n")
    _write_jsonl(paths["sft_messages"], make_sft_messages(seed, scale))
    _write_jsonl(paths["sharegpt"], make_sharegpt(seed, scale))
    ptr, pte = make_preference_pairs(seed, scale)
    _write_jsonl(paths["preference_train"], ptr)
    _write_jsonl(paths["preference_test"], pte)
    (out_dir / "bad_examples").mkdir(exist_ok=True)
    for name, data in _bad_example_bytes().items():
        (out_dir / "bad_examples" / name).write_bytes(data)
    paths["readme"].write_text(_render_readme(out_dir, paths, seed, scale), encoding="utf-8", newline="\n")
    return paths
