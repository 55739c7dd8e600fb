"""The fictional world every generated file is written about, and what is held out of training.

Countries with an English and a Chinese name for each fact (:func:`build_world`), the fact sentences the corpus states
them in, word lists, people and objects, and :func:`task_splits`, the one place the held-out test items are chosen.
Also the three helpers every generator shares: :func:`stream_rng` (one private RNG per named stream),
:func:`scaled` (a row count at a ``scale``) and :func:`dumps` (JSON as written to the files).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

DEFAULT_SEED: int = 0


def stream_rng(seed: int, stream: str) -> random.Random:
    """Private RNG for one named stream; independent of other streams."""
    return random.Random(f"datagen:{seed}:{stream}")


def scaled(base: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(base * scale)))


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


_SYLL: tuple[tuple[str, str], ...] = (
    ("ka", "卡"),
    ("lo", "洛"),
    ("mi", "米"),
    ("ra", "拉"),
    ("ve", "维"),
    ("do", "多"),
    ("su", "苏"),
    ("ta", "塔"),
    ("ni", "尼"),
    ("bel", "贝"),
    ("mor", "莫"),
    ("zan", "赞"),
    ("fen", "芬"),
    ("lu", "鲁"),
    ("sa", "萨"),
    ("te", "特"),
    ("ri", "里"),
    ("no", "诺"),
    ("ga", "加"),
    ("po", "波"),
    ("he", "赫"),
    ("da", "达"),
    ("ke", "柯"),
    ("ma", "玛"),
    ("vo", "沃"),
    ("li", "丽"),
    ("ro", "罗"),
    ("si", "西"),
    ("tor", "托"),
    ("wen", "温"),
    ("ya", "雅"),
    ("zo", "佐"),
    ("ba", "巴"),
    ("fi", "菲"),
    ("ha", "哈"),
    ("ki", "基"),
)
_COUNTRY_SUFFIX = (
    ("ria", "里亚"),
    ("land", "兰"),
    ("stan", "斯坦"),
    ("dor", "多尔"),
    ("nia", "尼亚"),
    ("vania", "瓦尼亚"),
)
_CAPITAL_SUFFIX = (
    ("ton", "顿"),
    ("burg", "堡"),
    ("port", "港"),
    ("ville", "维尔"),
    ("grad", "格勒"),
    ("mouth", "茅斯"),
)
_CURRENCY_UNIT = (
    ("crown", "克朗"),
    ("mark", "马克"),
    ("dinar", "第纳尔"),
    ("florin", "弗罗林"),
    ("ducat", "杜卡特"),
    ("shell", "贝币"),
    ("pearl", "珠币"),
    ("leaf", "叶币"),
)
_FOOD_ADJ = (
    ("sweet", "甜"),
    ("spicy", "辣"),
    ("smoked", "熏"),
    ("honey", "蜂蜜"),
    ("sour", "酸"),
    ("grilled", "烤"),
    ("steamed", "蒸"),
    ("crispy", "脆"),
)
_FOOD_DISH = (
    ("noodles", "面条"),
    ("dumplings", "饺子"),
    ("fish soup", "鱼汤"),
    ("bread", "面包"),
    ("pancakes", "煎饼"),
    ("rice", "米饭"),
    ("tofu", "豆腐"),
    ("mushroom stew", "蘑菇炖菜"),
    ("lamb skewers", "羊肉串"),
    ("bean cakes", "豆饼"),
    ("cheese pie", "奶酪派"),
    ("plum pudding", "李子布丁"),
)


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
    rng = stream_rng(seed, "world")
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
        countries.append(
            Country(
                id=f"c{i + 1:02d}",
                name_en=name[0],
                name_zh=name[1],
                capital_en=capital[0],
                capital_zh=capital[1],
                currency_en=f"{cur_root[0]} {unit[0]}",
                currency_zh=f"{cur_root[1]}{unit[1]}",
                river_en=f"{river[0]} River",
                river_zh=f"{river[1]}河",
                food_en=foods[i][0],
                food_zh=foods[i][1],
                founded=rng.randint(800, 1990),
            )
        )
    return countries


FACT_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
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


def slots(c: Country, lang: str) -> dict[str, str]:
    d = {k: c.get(k, lang) for k in ("name", "capital", "currency", "river", "food", "founded")}
    d["Food"] = d["food"][:1].upper() + d["food"][1:]
    return d


def world_facts(seed: int = DEFAULT_SEED, lang: str = "en") -> list[str]:
    """One canonical fact sentence per (country, attribute), in ``lang``."""
    out = []
    for c in build_world(seed):
        s = slots(c, lang)
        for attr in ("capital", "currency", "river", "founded", "food"):
            out.append(FACT_TEMPLATES[lang][attr][0].format(**s))
    return out


WORDS: tuple[str, ...] = tuple(
    """
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
""".split()
)

_EN_NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "f"),
    ("Leo", "m"),
    ("Anna", "f"),
    ("Tom", "m"),
    ("Lily", "f"),
    ("Sam", "m"),
    ("Nora", "f"),
    ("Ben", "m"),
    ("Ella", "f"),
    ("Max", "m"),
    ("Zoe", "f"),
    ("Omar", "m"),
    ("Ivy", "f"),
    ("Ken", "m"),
    ("Lucy", "f"),
    ("Hugo", "m"),
)
_ZH_NAMES: tuple[str, ...] = (
    "小明",
    "小红",
    "小华",
    "小丽",
    "李雷",
    "韩梅梅",
    "王芳",
    "张伟",
    "刘洋",
    "陈静",
    "赵磊",
    "孙悦",
)
OBJECTS: tuple[tuple[str, str, str, str], ...] = (
    ("apple", "apples", "苹果", "个"),
    ("book", "books", "书", "本"),
    ("pencil", "pencils", "铅笔", "支"),
    ("cup", "cups", "杯子", "个"),
    ("coin", "coins", "硬币", "枚"),
    ("fish", "fish", "鱼", "条"),
    ("flower", "flowers", "花", "朵"),
    ("egg", "eggs", "鸡蛋", "个"),
)


def person(rng: random.Random, lang: str) -> dict[str, str]:
    if lang == "zh":
        n = rng.choice(_ZH_NAMES)
        return {"N": n, "p": n, "P": n, "o": n, "poss": n + "的"}
    name, g = rng.choice(_EN_NAMES)
    p, o, poss = ("he", "him", "his") if g == "m" else ("she", "her", "her")
    return {"N": name, "p": p, "P": p.capitalize(), "o": o, "poss": poss}


def _holdout(items: list[Any], rng: random.Random, frac_num: int = 1, frac_den: int = 5) -> tuple[list[Any], list[Any]]:
    items = list(items)
    rng.shuffle(items)
    n_test = (len(items) * frac_num) // frac_den
    return items[n_test:], items[:n_test]


def task_splits(seed: int = DEFAULT_SEED) -> dict[str, tuple[list[Any], list[Any]]]:
    """``{kind: (train, test)}`` for ``add`` / ``sub`` operand pairs, ``words`` and ``countries``.

    The one place the held-out items are chosen: the tasks, the chat rows, the Alpaca and preference files and the
    corpus' question-answer pages all read it, so a test item is asked in no train file.
    """
    rng = stream_rng(seed, "tasks-split")
    add = _holdout([(a, b) for a in range(10) for b in range(10)], rng)
    sub = _holdout([(a, b) for a in range(20) for b in range(a + 1)], rng)
    words = _holdout(sorted(WORDS), rng)
    countries = _holdout(build_world(seed), rng)
    return {"add": add, "sub": sub, "words": words, "countries": countries}
