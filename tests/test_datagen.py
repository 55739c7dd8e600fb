"""Tests for course_utils/datagen/ (the generator) and the committed data_samples/ files."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from course_utils import datagen, tasks  # noqa: E402
from course_utils.train import file_sha256  # noqa: E402

COMMITTED = ROOT / "data_samples"
SMALL = 0.05


def _hashes(paths: dict[str, Path]) -> dict[str, str]:
    return {k: file_sha256(p) for k, p in paths.items()}


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generation at the default seed and scale (about 2-3 s)."""
    return datagen.generate_all(tmp_path_factory.mktemp("full"), seed=datagen.DEFAULT_SEED)


@pytest.fixture(scope="module")
def data(full: dict[str, Path]) -> dict[str, list[dict]]:
    return {k: _rows(p) for k, p in full.items() if p.suffix == ".jsonl" and not k.startswith("bad_")}


@pytest.fixture(scope="module")
def manifest(full: dict[str, Path]) -> dict:
    return json.loads(full["alpaca_manifest"].read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = datagen.generate_all(tmp_path / "a", seed=3, scale=SMALL)
    b = datagen.generate_all(tmp_path / "b", seed=3, scale=SMALL)
    assert set(a) == set(datagen.FILES)
    assert _hashes(a) == _hashes(b)


def test_different_seed_different_bytes(tmp_path: Path) -> None:
    a = _hashes(datagen.generate_all(tmp_path / "a", seed=0, scale=SMALL))
    b = _hashes(datagen.generate_all(tmp_path / "b", seed=1, scale=SMALL))
    for key in (
        "pretrain",
        "tasks_train",
        "tasks_test",
        "alpaca_raw",
        "sft_messages",
        "preference_train",
        "preference_test",
    ):
        assert a[key] != b[key], key
    assert datagen.build_world(0) != datagen.build_world(1)


def test_committed_files_match_fresh_generation(full: dict[str, Path]) -> None:
    """data_samples/ must be exactly `python scripts/generate_data.py --seed 0 --out data_samples/`."""
    for key, rel in datagen.FILES.items():
        committed = COMMITTED / rel
        assert committed.exists(), f"missing committed file {rel}"
        assert file_sha256(committed) == file_sha256(full[key]), (
            f"{rel} differs from a fresh generation; rerun scripts/generate_data.py"
        )


def test_cli_small(tmp_path: Path, run_script) -> None:
    out = tmp_path / "cli"
    run_script(["scripts/generate_data.py", "--seed", "5", "--out", str(out), "--scale", "0.02"], timeout=120)
    ref = datagen.generate_all(tmp_path / "ref", seed=5, scale=0.02)
    for key, rel in datagen.FILES.items():
        assert file_sha256(out / rel) == file_sha256(ref[key]), rel


# --------------------------------------------------------------------------- sizes & schemas


def test_sizes(full: dict[str, Path], data: dict[str, list[dict]]) -> None:
    total = sum(p.stat().st_size for p in full.values())
    assert total < 5_500_000  # the grounding documents (drill, qa, spelling) add ~1.4 MB to the corpus
    assert full["pretrain"].stat().st_size >= 2_200_000
    pre = data["pretrain"]
    zh = sum(len(json.dumps(r, ensure_ascii=False).encode()) for r in pre if r["lang"] == "zh")
    en = sum(len(json.dumps(r, ensure_ascii=False).encode()) for r in pre if r["lang"] == "en")
    assert 0.4 < zh / (zh + en) < 0.6
    assert len(data["tasks_train"]) == 1200 and len(data["tasks_test"]) == 300
    assert len(data["alpaca_raw"]) == 1500
    assert len(data["sft_messages"]) == 800 and len(data["sharegpt"]) == 50
    assert len(data["preference_train"]) == 800 and len(data["preference_test"]) == 200


def test_all_files_valid_utf8_jsonl(full: dict[str, Path]) -> None:
    for key, p in full.items():
        if p.suffix != ".jsonl" or key.startswith("bad_"):
            continue
        raw = p.read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        for line in raw.decode("utf-8").splitlines():
            assert isinstance(json.loads(line), dict)


def test_pretrain_schema(data: dict[str, list[dict]]) -> None:
    sources = set()
    for r in data["pretrain"]:
        assert set(r) == {"text", "lang", "source"}
        assert r["lang"] in ("zh", "en") and isinstance(r["text"], str) and r["text"].strip()
        sources.add(r["source"])
    assert sources == {"facts", "arithmetic", "story", "howto", "drill", "qa", "spelling"}
    texts = [r["text"] for r in data["pretrain"]]
    assert len(set(texts)) > 0.9 * len(texts)  # varied, not one sentence repeated


def test_world_facts_in_corpus(data: dict[str, list[dict]]) -> None:
    text = "\n".join(r["text"] for r in data["pretrain"])
    world = datagen.build_world(0)
    assert len(world) == 60
    for c in world:
        for lang in ("en", "zh"):
            assert text.count(c.get("capital", lang)) >= 5, (c.id, lang)
    assert re.search(r"[一二三四五六七八九十]+加[一二三四五六七八九十]+等于", text)
    assert re.search(r"\b\d+ \+ \d+ = \d+", text)


def test_task_schema(data: dict[str, list[dict]]) -> None:
    for split in ("tasks_train", "tasks_test"):
        rows = data[split]
        assert {r["task"] for r in rows} == set(tasks.TASK_TYPES)
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert set(r) == {"id", "task", "lang", "instruction", "input", "output", "answer"}
            assert r["lang"] in ("en", "zh")
            assert all(isinstance(r[k], str) for k in r)
            assert 1 <= len(r["answer"]) <= 20


def test_chat_schemas(data: dict[str, list[dict]]) -> None:
    for r in data["sft_messages"]:
        msgs = r["messages"]
        roles = [m["role"] for m in msgs]
        if roles[0] == "system":
            roles = roles[1:]
        assert 1 <= len(roles) // 2 <= 3 and len(roles) % 2 == 0
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    for r in data["sharegpt"]:
        froms = [t["from"] for t in r["conversations"]]
        assert set(froms) <= {"system", "human", "gpt"} and froms[-1] == "gpt"
    for split in ("preference_train", "preference_test"):
        for r in data[split]:
            assert {"id", "task", "prompt", "chosen", "rejected", "answer"} <= set(r)
            assert r["chosen"] != r["rejected"]


# --------------------------------------------------------------------------- held-out splits


def test_task_splits_disjoint(data: dict[str, list[dict]]) -> None:
    train, test = data["tasks_train"], data["tasks_test"]
    train_prompts = {tasks.task_prompt(r) for r in train}
    test_prompts = {tasks.task_prompt(r) for r in test}
    assert not train_prompts & test_prompts
    assert len(test_prompts) == len(test)

    def pairs(rows: list[dict], task: str) -> set[tuple[int, ...]]:
        return {tuple(int(x) for x in re.findall(r"\d+", r["input"])) for r in rows if r["task"] == task}

    for task in ("add", "sub"):
        assert not pairs(train, task) & pairs(test, task), task
    words_tr = {r["input"] for r in train if r["task"] == "first_letter"}
    assert not words_tr & {r["input"] for r in test if r["task"] == "first_letter"}
    c_train, c_test = datagen.task_splits()["countries"]
    for task in ("capital", "currency"):
        asked_tr = {r["answer"] for r in train if r["task"] == task}
        asked_te = {r["answer"] for r in test if r["task"] == task}
        assert asked_te and not asked_tr & asked_te, task  # new entities, not a new phrasing
        assert asked_te <= {c.get(task, lang) for c in c_test for lang in ("en", "zh")}, task


def test_held_out_countries_are_asked_in_no_train_file(data: dict[str, list[dict]]) -> None:
    """A test country's name, capital and currency occur in no SFT/DPO train file; the corpus states them."""
    _, c_test = datagen.task_splits()["countries"]
    held = {c.get(k, lang) for c in c_test for lang in ("en", "zh") for k in ("name", "capital", "currency")}
    for name in ("tasks_train", "sft_messages", "sharegpt", "alpaca_raw", "preference_train"):
        text = json.dumps(data[name], ensure_ascii=False)
        assert not [h for h in held if h in text], name
    corpus = json.dumps(data["pretrain"], ensure_ascii=False)
    assert all(h in corpus for h in held)


def test_no_test_prompt_in_training_files(data: dict[str, list[dict]]) -> None:
    test_prompts = {tasks.task_prompt(r) for r in data["tasks_test"]}
    test_questions = {r["input"] for r in data["tasks_test"] if r["task"] == "capital"}
    users = [m["content"] for r in data["sft_messages"] for m in r["messages"] if m["role"] == "user"]
    users += [t["value"] for r in data["sharegpt"] for t in r["conversations"] if t["from"] == "human"]
    users += [tasks.task_prompt(r) for r in data["alpaca_raw"]]
    users += [r["prompt"] for r in data["preference_train"]]
    for u in users:
        assert u not in test_prompts
        assert not any(q in u for q in test_questions), u
    test_ids = {r["id"] for r in data["tasks_test"]}
    train_ids = {r["id"] for r in data["tasks_train"]}
    assert all(r["source_id"] in train_ids for r in data["preference_train"])
    assert all(r["source_id"] in test_ids for r in data["preference_test"])


# --------------------------------------------------------------------------- scoring


def test_fact_replies_are_the_corpus_sentences() -> None:
    """The gold reply of a fact task restates the corpus' first fact sentence (tasks.FACT_REPLY is that route)."""
    from course_utils.datagen.world import FACT_TEMPLATES

    for task, by_lang in tasks.FACT_REPLY.items():
        for lang, reply in by_lang.items():
            assert reply == FACT_TEMPLATES[lang][task][0], (task, lang)


def test_gold_answers_score(data: dict[str, list[dict]]) -> None:
    for split in ("tasks_train", "tasks_test"):
        for r in data[split]:
            assert tasks.score_answer(r["task"], r["output"], r["answer"]), r


def test_preferences_checkable(data: dict[str, list[dict]]) -> None:
    for split in ("preference_train", "preference_test"):
        kinds = [r["rejected_kind"] for r in data[split]]
        assert kinds.count("wrong") > 0.7 * len(kinds)
        for r in data[split]:
            assert tasks.score_answer(r["task"], r["chosen"], r["answer"]), r
            assert not tasks.score_answer(r["task"], r["rejected"], r["answer"]), r


# --------------------------------------------------------------------------- dirty alpaca rows

_PHONE_RE = re.compile(r"(?:\+\d{1,3}[ -]?)?(?:1[3-9]\d[- ]?\d{4}[- ]?\d{4}|\d{2,3}[ -]\d{3,4}[ -]\d{4})")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_ODD_SCRIPT_RE = re.compile(r"[\u3040-\u30ff\uac00-\ud7af\u0400-\u04ff]")


def test_manifest_matches_rows(data: dict[str, list[dict]], manifest: dict) -> None:
    rows = data["alpaca_raw"]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows) == manifest["n_rows"]
    assert set(manifest["kinds"]) == set(datagen.DIRTY_KINDS)
    dirty = [i for ids in manifest["kinds"].values() for i in ids]
    assert len(dirty) == len(set(dirty))  # one kind per row
    assert manifest == datagen.dirty_manifest(0)
    for kind, ids in manifest["kinds"].items():
        assert 0.01 * len(rows) <= len(ids) <= 0.05 * len(rows), kind
    pos = {r["id"]: n for n, r in enumerate(rows)}
    for rid in manifest["kinds"]["exact_duplicate"] + manifest["kinds"]["near_duplicate"]:
        orig = manifest["details"][rid]["of"]
        assert pos[orig] < pos[rid] and orig not in dirty

    clean = [r for r in rows if r["id"] not in set(dirty)]
    # keep-first exact dedup finds exactly the exact duplicates
    seen, found = set(), []
    for r in rows:
        key = (r["instruction"], r["input"], r["output"])
        if key in seen:
            found.append(r["id"])
        seen.add(key)
    assert sorted(found) == sorted(manifest["kinds"]["exact_duplicate"])
    for rid in manifest["kinds"]["near_duplicate"]:
        a, b = by_id[rid], by_id[manifest["details"][rid]["of"]]
        assert (a["instruction"], a["input"], a["output"]) != (b["instruction"], b["input"], b["output"])
    for rid in manifest["kinds"]["empty_output"]:
        assert by_id[rid]["output"].strip() == ""
    for rid in manifest["kinds"]["too_short"]:
        assert 0 < len(by_id[rid]["output"].strip()) <= 3
    for rid in manifest["kinds"]["pii"]:
        det, out = manifest["details"][rid], by_id[rid]["output"]
        assert all(e in out for e in det["emails"]) and all(p in out for p in det["phones"])
        assert _EMAIL_RE.search(out) and _PHONE_RE.search(out)
    for rid in manifest["kinds"]["banned_word"]:
        assert manifest["details"][rid]["word"] in by_id[rid]["output"]
    for rid in manifest["kinds"]["wrong_language"]:
        assert _ODD_SCRIPT_RE.search(by_id[rid]["instruction"] + by_id[rid]["output"])
    for rid in manifest["kinds"]["nfkc"]:
        r = by_id[rid]
        norm = {k: " ".join(unicodedata.normalize("NFKC", r[k]).split()) for k in ("instruction", "output")}
        assert norm != {k: r[k] for k in ("instruction", "output")}
    for rid in manifest["kinds"]["mojibake"]:
        out = by_id[rid]["output"]
        if manifest["details"][rid]["codec"].endswith("cp1252"):
            repaired = bytes(_cp1252_byte(ch) for ch in out).decode("utf-8")
            assert re.search(r"[\u4e00-\u9fff]", repaired)

    # clean rows carry none of the problems
    for r in clean:
        text = r["instruction"] + r["input"] + r["output"]
        assert len(r["output"].strip()) >= 4, r
        assert not _EMAIL_RE.search(text) and not _PHONE_RE.search(r["output"]), r
        assert not any(w in text.lower() for w in datagen.BANNED_WORDS), r
        assert not _ODD_SCRIPT_RE.search(text), r
        assert not re.search(r"[\u00c0-\u00ff\u0080-\u009f\ufffd]", text), r
        assert not re.search(r"[\u3000\u00a0\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]", text), r
        for k in ("instruction", "input", "output"):
            assert r[k] == r[k].strip() and "  " not in r[k], r


def _cp1252_byte(ch: str) -> int:
    try:
        return ch.encode("cp1252")[0]
    except UnicodeEncodeError:
        return ord(ch)


# --------------------------------------------------------------------------- bad examples


def _validate_line(raw: bytes, fmt: str) -> bool:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if fmt == "alpaca":
        return (
            all(isinstance(obj.get(k), str) for k in ("instruction", "input", "output"))
            and bool(obj["instruction"].strip())
            and bool(obj["output"].strip())
        )
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return False
    if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str) for m in msgs):
        return False
    return any(m["role"] == "assistant" for m in msgs) and msgs[-1]["role"] == "assistant"


def test_bad_examples(full: dict[str, Path]) -> None:
    for name, info in datagen.BAD_EXAMPLES.items():
        lines = (full["pretrain"].parent / "bad_examples" / name).read_bytes().splitlines()
        assert 3 <= len(lines) <= 6
        bad = [n + 1 for n, line in enumerate(lines) if not _validate_line(line, info["format"])]
        assert bad == info["bad_lines"], name
    raw = (full["pretrain"].parent / "bad_examples" / "non_utf8.jsonl").read_bytes()
    assert b"\xff" in raw
