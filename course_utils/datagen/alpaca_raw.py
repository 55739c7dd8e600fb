"""``alpaca_raw.jsonl`` and ``alpaca_raw_manifest.json``: Alpaca-style instruction rows with injected dirt for the
cleaning lesson, and the answer key that lists every dirty row by kind."""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

from course_utils.datagen.pretrain_corpus import howto_parts, story_doc
from course_utils.datagen.task_rows import make_tasks
from course_utils.datagen.world import (
    DEFAULT_SEED,
    FACT_TEMPLATES,
    OBJECTS,
    Country,
    person,
    scaled,
    slots,
    stream_rng,
    task_splits,
)
from course_utils.tasks import task_prompt

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

_N_ALPACA = 1500


_PARALLEL_FACTS: tuple[tuple[str, str], ...] = (
    ("The capital of {name_en} is {capital_en}.", "{name_zh}的首都是{capital_zh}。"),
    ("The currency of {name_en} is the {currency_en}.", "{name_zh}的货币是{currency_zh}。"),
    ("The {river_en} flows through {name_en}.", "{river_zh}流经{name_zh}。"),
    ("{name_en} was founded in {founded}.", "{name_zh}建立于{founded}年。"),
    ("People in {name_en} love {food_en}.", "{name_zh}的人很喜欢吃{food_zh}。"),
)


_GLOSSARY: tuple[tuple[str, str, str, str], ...] = (
    (
        "a tokenizer",
        "分词器",
        "A tokenizer splits text into small units called tokens and maps each token to an integer id. The model only ever sees these ids.",
        "分词器把文本切分成称为词元的小单位，并把每个词元映射为一个整数编号。模型看到的只是这些编号。",
    ),
    (
        "the learning rate",
        "学习率",
        "The learning rate controls how big each update step of the weights is. Too large a value makes training unstable; too small a value makes it slow.",
        "学习率决定每次更新权重时步子迈多大。太大训练会不稳定，太小训练会很慢。",
    ),
    (
        "overfitting",
        "过拟合",
        "Overfitting means the model memorises the training data and does worse on new data. A growing gap between training and validation loss is a typical sign.",
        "过拟合是指模型记住了训练数据，在新数据上表现变差。训练损失和验证损失的差距越来越大是典型信号。",
    ),
    (
        "the batch size",
        "批大小",
        "The batch size is the number of samples processed together in one step. Larger batches give smoother gradients but need more memory.",
        "批大小是一步中一起处理的样本数量。批越大梯度越平滑，但需要更多显存。",
    ),
    (
        "LoRA",
        "LoRA",
        "LoRA freezes the original weights and learns a low-rank update made of two small matrices. Only these small matrices are trained.",
        "LoRA冻结原始权重，只学习由两个小矩阵组成的低秩增量。训练时只更新这两个小矩阵。",
    ),
    (
        "gradient accumulation",
        "梯度累积",
        "Gradient accumulation adds up gradients over several small batches before one optimizer step. It simulates a larger batch without more memory.",
        "梯度累积把几个小批次的梯度加起来，再做一次优化器更新。它用较少的显存模拟更大的批。",
    ),
    (
        "a loss function",
        "损失函数",
        "A loss function measures how wrong the model's predictions are. Training tries to make this number smaller.",
        "损失函数衡量模型的预测错得有多厉害。训练的目标就是让这个数变小。",
    ),
    (
        "an epoch",
        "轮次",
        "An epoch is one full pass over the training data. Small datasets are often trained for several epochs.",
        "一个轮次是把训练数据完整地过一遍。小数据集通常会训练好几个轮次。",
    ),
    (
        "a validation set",
        "验证集",
        "A validation set is data held out from training and used to check the model during training. It must not overlap with the training data.",
        "验证集是从训练中留出来的数据，用来在训练过程中检查模型。它不能和训练数据重叠。",
    ),
    (
        "mixed precision",
        "混合精度",
        "Mixed precision runs most computations in 16-bit numbers while keeping a 32-bit copy of the weights. It saves memory and time.",
        "混合精度用16位数做大部分计算，同时保留一份32位的权重副本。这样可以节省显存和时间。",
    ),
    (
        "a chat template",
        "对话模板",
        "A chat template turns a list of messages into one string with role markers. Training and inference must use the same template.",
        "对话模板把一组消息拼成带有角色标记的一个字符串。训练和推理必须使用同一个模板。",
    ),
    (
        "label masking",
        "标签掩码",
        "Label masking sets the labels of prompt tokens to -100 so that the loss is only computed on the answer tokens.",
        "标签掩码把提示部分词元的标签设为-100，这样损失只在回答部分计算。",
    ),
    (
        "deduplication",
        "去重",
        "Deduplication removes repeated samples from a dataset. Repeated samples waste compute and can make the model memorise them.",
        "去重就是删除数据集中重复的样本。重复样本浪费算力，还会让模型死记硬背。",
    ),
    (
        "a checkpoint",
        "检查点",
        "A checkpoint is a saved copy of the model weights and training state. It lets you resume training or evaluate later.",
        "检查点是保存下来的模型权重和训练状态。有了它可以继续训练或稍后评估。",
    ),
    (
        "perplexity",
        "困惑度",
        "Perplexity is the exponential of the average token loss. Lower perplexity means the model is less surprised by the text.",
        "困惑度是平均词元损失的指数。困惑度越低，说明模型对文本越不意外。",
    ),
    (
        "a reward model",
        "奖励模型",
        "A reward model gives a score to an answer. It is trained on pairs where one answer is preferred over the other.",
        "奖励模型给一个回答打分。它用成对数据训练，每对里有一个回答更受偏好。",
    ),
)


def _alpaca_clean_candidates(rng: random.Random, world: list[Country], lang: str) -> dict[str, Any]:
    """One random clean Alpaca row (may repeat; caller de-duplicates)."""
    cat = rng.choice(("qa_world", "qa_world", "list", "explain", "rewrite", "translate", "math", "howto", "story"))
    c = rng.choice(world)
    s = slots(c, lang)
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
        ans = rng.choice(FACT_TEMPLATES[lang][attr]).format(**s)
        return dict(instruction=q.format(**s), input="", output=ans, category=cat)
    if cat == "list":
        attrs = rng.sample(list(FACT_TEMPLATES[lang]), 3)
        lines = [f"{i + 1}. {FACT_TEMPLATES[lang][a][0].format(**s)}" for i, a in enumerate(attrs)]
        ins = rng.choice(
            ("List three facts about {name}.", "Give me three facts about {name}.")
            if en
            else ("列出关于{name}的三个事实。", "请给出{name}的三条信息。")
        ).format(**s)
        return dict(instruction=ins, input="", output="\n".join(lines), category=cat, _key=("list", c.id, lang))
    if cat == "explain":
        term_en, term_zh, def_en, def_zh = rng.choice(_GLOSSARY)
        if en:
            ins = rng.choice(("Explain what {t} is.", "Briefly explain {t}.", "What is {t} in machine learning?"))
            return dict(
                instruction=ins.format(t=term_en), input="", output=def_en, category=cat, _key=("explain", term_en)
            )
        ins = rng.choice(("解释一下什么是{t}。", "简要说明{t}。", "{t}是什么意思？"))
        return dict(
            instruction=ins.format(t=term_zh), input="", output=def_zh, category=cat, _key=("explain", term_zh + "/zh")
        )
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
        sing, plur, zh_obj, mw = rng.choice(OBJECTS)
        per = person(rng, lang)
        if en:
            ins = f"{per['N']} has {a} {plur} and buys {b} more. How many {plur} does {per['p']} have now?"
            out = f"{per['P']} has {a} + {b} = {a + b} {plur}."
        else:
            ins = f"{per['N']}有{a}{mw}{zh_obj}，又买了{b}{mw}。现在一共有多少{mw}？"
            out = f"一共有{a} + {b} = {a + b}{mw}{zh_obj}。"
        return dict(instruction=ins, input="", output=out, category=cat)
    if cat == "howto":
        topic, steps = howto_parts(rng, world, lang)
        if en:
            ins = rng.choice(("How do I {t}?", "Explain how to {t}.", "List the steps to {t}.")).format(t=topic)
            out = "\n".join(f"{i + 1}. {st[0].upper()}{st[1:]}." for i, st in enumerate(steps))
        else:
            ins = rng.choice(("怎样{t}？", "说明如何{t}。", "列出{t}的步骤。")).format(t=topic)
            out = "\n".join(f"{i + 1}. {st}。" for i, st in enumerate(steps))
        return dict(instruction=ins, input="", output=out, category=cat)
    # story
    story = story_doc(rng, world, lang, country=c)
    ins = rng.choice(
        ("Write a short story set in {name}.", "Tell me a short story about a trip to {name}.")
        if en
        else ("写一个发生在{name}的小故事。", "讲一个去{name}旅行的小故事。")
    )
    return dict(instruction=ins.format(**s), input="", output=story, category="story")


_NEAR_WORD_SWAPS_EN = ((" is ", " was "), (" the ", " a "), (" and ", " & "), (" has ", " had "))
_NEAR_WORD_SWAPS_ZH = (("是", "为"), ("一些", "几个"), ("很", "非常"), ("有名", "著名"))
_WRONG_LANG = (
    ("ja", "{a}たす{b}はいくつですか？", "{a}たす{b}は{c}です。"),
    ("ru", "Сколько будет {a} плюс {b}?", "{a} плюс {b} будет {c}."),
    ("ko", "{a} 더하기 {b}의 값은 얼마인가요?", "{a} 더하기 {b}의 값은 {c}입니다."),
)
_DIRTY_FRACTIONS: dict[str, tuple[int, int]] = {  # kind -> (numerator, denominator) of total rows
    "exact_duplicate": (3, 100),
    "near_duplicate": (3, 100),
    "empty_output": (3, 200),
    "too_short": (3, 200),
    "pii": (3, 100),
    "mojibake": (2, 100),
    "nfkc": (3, 100),
    "banned_word": (2, 100),
    "wrong_language": (3, 200),
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


def make_alpaca(seed: int, scale: float) -> tuple[list[dict[str, str]], dict[str, Any]]:
    world = task_splits(seed)["countries"][0]  # held-out countries are asked about in no train file
    rng = stream_rng(seed, "alpaca")
    total = scaled(_N_ALPACA, scale, 40)
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
        base.append(
            {
                "instruction": row["instruction"],
                "input": row["input"],
                "output": row["output"],
                "category": row["category"],
                "_lang": lang,
            }
        )
    rng.shuffle(base)

    # choose which base rows get which in-place dirt; duplicate sources stay clean
    zh_idx = [i for i, r in enumerate(base) if not r["output"].isascii()]
    moj = rng.sample(zh_idx, counts["mojibake"])
    taken = set(moj)
    rest = [i for i in range(n_base) if i not in taken]
    rng.shuffle(rest)
    assign: dict[int, str] = {i: "mojibake" for i in moj}
    pos = 0
    for kind in (
        "exact_duplicate",
        "near_duplicate",
        "empty_output",
        "too_short",
        "pii",
        "nfkc",
        "banned_word",
        "wrong_language",
    ):
        for i in rest[pos : pos + counts[kind]]:
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
            phone = {
                "cn_dash": f"{pre}-{d4()}-{d4()}",
                "cn_plain": f"{pre}{d4()}{d4()}",
                "cn_plus86": f"+86 {pre} {d4()} {d4()}",
                "us": f"+1 415-555-01{rng.randint(0, 99):02d}",
                "uk": f"+44 20 7946 0{rng.randint(0, 999):03d}",
            }[style]
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
            r.update(instruction=q.format(a=a, b=b), input="", output=a_tpl.format(a=a, b=b, c=a + b), category="math")
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
        rows.append(
            {
                "id": rid,
                "instruction": r["instruction"],
                "input": r["input"],
                "output": r["output"],
                "category": r["category"],
            }
        )
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
    return make_alpaca(seed, scale)[0]


def dirty_manifest(seed: int = DEFAULT_SEED, scale: float = 1.0) -> dict[str, Any]:
    """Which alpaca ids carry which kind of dirt (same content as ``alpaca_raw_manifest.json``)."""
    return make_alpaca(seed, scale)[1]
