"""Cleaning, filtering, de-duplication, splitting and reporting of instruction data (notebook 01).

Each step works on a ``datasets.Dataset`` (or a plain list of dicts where noted) and says how many rows it dropped:
:func:`normalize_text` / :func:`fix_mojibake` / :func:`redact_pii` / :func:`clean_example` (text), the ``rule_*``
filters with :func:`apply_rules`, :func:`exact_dedup` and :func:`near_dedup` (MinHash LSH), :func:`stratified_split`
and :class:`DataReport`. Reading JSONL with errors that name file, line and field is :mod:`course_utils.data`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    import datasketch
    import matplotlib.figure


#: Zero-width and BOM characters that NFKC keeps but that only add invisible noise.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
#: Control characters other than newline and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")
_NEWLINES = re.compile(r"\n{3,}")

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
#: Mainland mobile numbers (optionally +86, optionally split by spaces or dashes), landlines such as 010-12345678,
#: and North-American style (555) 123-4567 / 555-123-4567. Digit runs are bounded so ids and years are not touched.
PHONE_RE = re.compile(
    r"(?<![0-9A-Za-z_+])(?:"
    r"(?:\+?86[\s\-]?)?1[3-9]\d(?:[\s\-]?\d{4}){2}"
    r"|0\d{2,3}-\d{7,8}"
    r"|(?:\+?1[\s\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s\-])\d{3}[\s\-]\d{4}"
    r")(?![0-9A-Za-z_])"
)
EMAIL_TOKEN = "<EMAIL>"
PHONE_TOKEN = "<PHONE>"


#: Full-width punctuation that Chinese text uses on purpose; NFKC would turn it into ASCII (，-> ,).
CJK_PUNCTUATION = "，！？：；（）"
_CJK_PUNCT_RE = re.compile(f"([{CJK_PUNCTUATION}])")


def normalize_text(text: str, keep_cjk_punctuation: bool = True) -> str:
    """Unicode NFKC (full-width ``ＡＢＣ１２３`` -> ``ABC123``, ideographic/no-break spaces -> space), drop
    zero-width and control characters, unify line endings, collapse runs of spaces and blank lines, strip.

    Blanket NFKC also rewrites Chinese full-width punctuation (``，？：`` -> ``,?:``); with
    ``keep_cjk_punctuation=True`` (default) those characters are left as they are.
    """
    if keep_cjk_punctuation:
        parts = _CJK_PUNCT_RE.split(text)
        text = "".join(part if i % 2 else unicodedata.normalize("NFKC", part) for i, part in enumerate(parts))
    else:
        text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip(" ") for line in text.split("\n"))
    text = _NEWLINES.sub("\n\n", text)
    return text.strip()


#: Characters that show up when UTF-8 bytes are decoded as cp1252/latin-1 (``é²èµž``, ``â€œ``).
_LATIN1_MOJIBAKE_RE = re.compile(
    "[\u00c0-\u00ff][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2026\u2030\u2039\u203a\u20ac\u2122]"
)


def _sloppy_cp1252_bytes(text: str) -> bytes:
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) > 0xFF:
                raise
            out.append(ord(ch))  # bytes cp1252 leaves undefined were decoded as latin-1
    return bytes(out)


def fix_mojibake(text: str) -> tuple[str, str]:
    """Detect and repair text whose UTF-8 bytes were decoded with the wrong codec.

    Returns ``(text, status)`` with status ``"ok"`` (nothing found), ``"repaired"`` (UTF-8 read as cp1252 /
    latin-1, or as GBK without losses: re-encoded and decoded as UTF-8) or ``"unrepairable"`` (contains U+FFFD,
    the replacement character: the original bytes are gone; drop the row). A small version of what ``ftfy`` does.
    """
    if "\ufffd" in text:
        return text, "unrepairable"
    if _LATIN1_MOJIBAKE_RE.search(text):
        try:
            return _sloppy_cp1252_bytes(text).decode("utf-8"), "repaired"
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    if cjk_ratio(text) > 0:
        try:
            fixed = text.encode("gbk").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return text, "ok"  # real Chinese in GBK is almost never valid UTF-8
        if fixed != text:
            return fixed, "repaired"
    return text, "ok"


def redact_pii(text: str) -> tuple[str, int]:
    """Replace e-mail addresses with ``<EMAIL>`` and phone numbers with ``<PHONE>``; return (text, replacements)."""
    text, n_email = EMAIL_RE.subn(EMAIL_TOKEN, text)
    text, n_phone = PHONE_RE.subn(PHONE_TOKEN, text)
    return text, n_email + n_phone


def clean_example(example: Mapping[str, Any], fields: Sequence[str] = ("instruction", "input", "output")) -> dict:
    """Clean ``fields`` of one row (for ``Dataset.map``): repair mojibake, normalise, redact PII.

    Adds ``n_redacted`` (PII replacements), ``n_repaired`` (fields repaired from mojibake) and ``unrepairable``
    (True when a field had lost bytes: drop such rows with a rule).
    """
    out: dict[str, Any] = {}
    redacted = repaired = 0
    unrepairable = False
    for name in fields:
        value = example.get(name)
        if isinstance(value, str):
            value, status = fix_mojibake(value)
            repaired += status == "repaired"
            unrepairable |= status == "unrepairable"
            value, count = redact_pii(normalize_text(value))
            redacted += count
        out[name] = value
    out.update(n_redacted=redacted, n_repaired=repaired, unrepairable=unrepairable)
    return out


def cjk_ratio(text: str) -> float:
    """Fraction of letters that are CJK ideographs (0 for text without letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in letters) / len(letters)


def detect_language(text: str) -> str:
    """A crude language guess by Unicode script: ``"ja"`` (any kana), ``"ko"`` (Hangul), ``"ru"`` (Cyrillic),
    ``"zh"`` (>= 30 % CJK ideographs among letters), ``"en"`` (>= 80 % ASCII letters), else ``"other"``.
    Real pipelines use a trained identifier (fastText lid.176); scripts are enough for this data."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "other"
    if any("\u3040" <= ch <= "\u30ff" for ch in letters):
        return "ja"
    if any("\uac00" <= ch <= "\ud7af" or "\u1100" <= ch <= "\u11ff" for ch in letters):
        return "ko"
    if sum("\u0400" <= ch <= "\u04ff" for ch in letters) / len(letters) >= 0.3:
        return "ru"
    if cjk_ratio(text) >= 0.3:
        return "zh"
    if sum(ch.isascii() for ch in letters) / len(letters) >= 0.8:
        return "en"
    return "other"


#: A rule: a name and a predicate that returns True to KEEP the row.
Rule = tuple[str, Callable[[Mapping[str, Any]], bool]]


def rule_min_length(field_name: str = "output", min_chars: int = 5) -> Rule:
    """Keep rows whose ``field_name`` has more than ``min_chars`` characters after stripping (the slides' rule)."""
    return (f"{field_name} <= {min_chars} chars", lambda ex: len(str(ex[field_name]).strip()) > min_chars)


def rule_no_banned_words(banned: Iterable[str], fields: Sequence[str] = ("instruction", "input", "output")) -> Rule:
    """Drop rows where any of ``fields`` contains a banned word (case-insensitive substring match)."""
    words = [word.lower() for word in banned]

    def keep(ex: Mapping[str, Any]) -> bool:
        text = " ".join(str(ex.get(name, "")) for name in fields).lower()
        return not any(word in text for word in words)

    return ("banned word", keep)


def rule_language(allowed: Iterable[str] = ("zh", "en"), fields: Sequence[str] = ("instruction", "output")) -> Rule:
    """Keep rows where each non-empty field of ``fields`` is detected as one of ``allowed`` languages.

    Field by field, because a translation row mixes languages (a Chinese instruction, an English answer)."""
    allowed = set(allowed)

    def keep(ex: Mapping[str, Any]) -> bool:
        texts = [str(ex.get(name) or "") for name in fields]
        return all(detect_language(text) in allowed for text in texts if any(ch.isalpha() for ch in text))

    return ("language not in " + "/".join(sorted(allowed)), keep)


def first_failed_rule(example: Mapping[str, Any], rules: Sequence[Rule]) -> str | None:
    """Name of the first rule ``example`` fails, or None when it passes them all."""
    for name, keep in rules:
        if not keep(example):
            return name
    return None


def apply_rules(dataset: "datasets.Dataset | list[dict]", rules: Sequence[Rule]) -> tuple["datasets.Dataset", Counter]:
    """Filter ``dataset`` with ``rules``; return (kept rows, Counter rule name -> rows it dropped).

    Each dropped row is counted once, under the first rule it fails, so the counts add up to the rows removed.
    """
    reasons = [first_failed_rule(example, rules) for example in dataset]
    drops = Counter(reason for reason in reasons if reason is not None)
    keep = [index for index, reason in enumerate(reasons) if reason is None]
    return _select(dataset, keep), drops


def _select(dataset: Any, indices: list[int]) -> Any:
    """``dataset.select(indices)`` for a ``datasets.Dataset``; the same rows as a list for a list of dicts."""
    if hasattr(dataset, "select"):
        return dataset.select(indices)
    return [dataset[index] for index in indices]


def text_hash(text: str) -> str:
    """SHA-256 hex digest of ``text`` after whitespace collapsing and lower-casing (the exact-duplicate key)."""
    key = " ".join(text.split()).lower()
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def example_text(example: Mapping[str, Any], fields: Sequence[str] = ("instruction", "input", "output")) -> str:
    """The fields of a row joined by newlines: what de-duplication compares."""
    return "\n".join(str(example.get(name, "")) for name in fields)


def exact_dedup(
    dataset: "datasets.Dataset", fields: Sequence[str] = ("instruction", "input", "output")
) -> tuple["datasets.Dataset", int]:
    """Keep the first row of each group with the same :func:`text_hash` of ``fields``; return (rows, dropped)."""
    seen: set[str] = set()
    keep: list[int] = []
    for index, example in enumerate(dataset):
        digest = text_hash(example_text(example, fields))
        if digest not in seen:
            seen.add(digest)
            keep.append(index)
    return _select(dataset, keep), len(dataset) - len(keep)


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the whitespace-collapsed, lower-cased text (works for Chinese, which has no spaces)."""
    text = " ".join(text.split()).lower()
    if len(text) <= n:
        return {text}
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the character n-gram sets of ``a`` and ``b`` (what MinHash estimates)."""
    sa, sb = char_shingles(a, n), char_shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def minhash(text: str, num_perm: int = 128, n: int = 5, seed: int = 1) -> "datasketch.MinHash":
    """A ``datasketch.MinHash`` of the character n-grams of ``text``."""
    from datasketch import MinHash

    signature = MinHash(num_perm=num_perm, seed=seed)
    signature.update_batch([shingle.encode("utf-8") for shingle in char_shingles(text, n)])
    return signature


def near_dedup(
    dataset: "datasets.Dataset | list[dict]",
    fields: Sequence[str] = ("instruction", "input", "output"),
    threshold: float = 0.8,
    num_perm: int = 128,
    n: int = 5,
    seed: int = 1,
    lsh_threshold: float | None = None,
) -> tuple["datasets.Dataset | list[dict]", list[tuple[int, int, float]]]:
    """Remove near-duplicates with MinHash LSH (``datasketch``).

    LSH (at ``lsh_threshold``, default ``threshold - 0.1``, for recall) proposes candidate rows among the rows
    kept so far; a row is dropped when a candidate's exact character-n-gram Jaccard is >= ``threshold``
    (confirming with the exact value removes LSH's false positives and the estimate's noise). The first row of a
    cluster is kept. Returns (kept rows, [(dropped index, kept index, jaccard)]), indices into ``dataset``.
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(
        threshold=lsh_threshold if lsh_threshold is not None else max(threshold - 0.1, 0.05), num_perm=num_perm
    )
    shingles: dict[int, set[str]] = {}
    keep: list[int] = []
    pairs: list[tuple[int, int, float]] = []
    for index, example in enumerate(dataset):
        text = example_text(example, fields)
        grams = char_shingles(text, n)
        signature = minhash(text, num_perm=num_perm, n=n, seed=seed)
        scored = sorted((len(grams & shingles[key]) / len(grams | shingles[key]), -key) for key in lsh.query(signature))
        if scored and scored[-1][0] >= threshold:
            similarity, negative_key = scored[-1]
            pairs.append((index, -negative_key, round(float(similarity), 3)))
            continue
        lsh.insert(index, signature)
        shingles[index] = grams
        keep.append(index)
    return _select(dataset, keep), pairs


# --- format conversion: one converter per format, in ``course_utils.chat_formats`` (``alpaca_to_messages``,
# ``sharegpt_to_messages``, ``to_messages``), with the same checks as every loader ------------------------------

# --- splitting ---------------------------------------------------------------------------------------------------

#: Length buckets in characters (not ``str.split()`` words: Chinese has no spaces, so every Chinese prompt would
#: be "one word" and land in bucket 0, as the slides' version does).
LENGTH_BOUNDARIES: tuple[int, ...] = (64, 256)


def length_bucket(n_chars: int, boundaries: Sequence[int] = LENGTH_BOUNDARIES) -> str:
    """Name of the length bucket of ``n_chars``: ``"short"``/``"medium"``/``"long"`` for two boundaries, else ``"b<i>"``."""
    index = sum(n_chars >= edge for edge in boundaries)
    names = ("short", "medium", "long") if len(boundaries) == 2 else tuple(f"b{i}" for i in range(len(boundaries) + 1))
    return names[index]


def stratified_split(
    dataset: "datasets.Dataset",
    test_size: float = 0.1,
    seed: int = 0,
    by: Sequence[str] = ("category", "len_bucket"),
    min_per_stratum: int = 2,
    column: str = "stratum",
) -> tuple["datasets.DatasetDict", dict[str, int]]:
    """Seeded train/test split stratified by the combination of the ``by`` columns.

    ``train_test_split(stratify_by_column=...)`` needs a ``ClassLabel`` column, so the joined key (e.g.
    ``"math|short"``) is cast to ``ClassLabel``. Strata with fewer than ``min_per_stratum`` rows cannot be split
    and are merged into ``"rare"`` (into the largest stratum when "rare" itself is too small). Returns the split (with the ``stratum`` column kept) and the stratum sizes.
    """
    from datasets import ClassLabel

    keys = ["|".join(str(example[name]) for name in by) for example in dataset]
    sizes = Counter(keys)
    keys = [key if sizes[key] >= min_per_stratum else "rare" for key in keys]
    if 0 < keys.count("rare") < min_per_stratum:  # still too small: join the largest stratum
        largest = max(sorted(set(keys) - {"rare"}), key=keys.count)
        keys = [largest if key == "rare" else key for key in keys]
    dataset = dataset.add_column(column, keys)
    dataset = dataset.cast_column(column, ClassLabel(names=sorted(set(keys))))
    split = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column=column)
    return split, dict(sorted(Counter(keys).items()))


# --- report ------------------------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What a cleaning pipeline did: rows in, rows dropped by each step (in order), rows out, and lengths."""

    rows_in: int = 0
    steps: list[tuple[str, int]] = field(default_factory=list)
    lengths_before: list[int] = field(default_factory=list)
    lengths_after: list[int] = field(default_factory=list)

    def add(self, step: str, dropped: int) -> None:
        """Record that ``step`` dropped ``dropped`` rows."""
        self.steps.append((step, int(dropped)))

    @property
    def rows_dropped(self) -> int:
        return sum(count for _, count in self.steps)

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rows_dropped

    def dropped_by(self, step: str) -> int:
        """Rows dropped by every step whose name starts with ``step``."""
        return sum(count for name, count in self.steps if name.startswith(step))

    def table(self) -> str:
        """A plain-text table: one line per step, then the totals."""
        width = max([len(name) + 2 for name, _ in self.steps] + [20])
        lines = [f"{'rows in':<{width}} {self.rows_in:>6}"]
        lines += [f"{'- ' + name:<{width}} {count:>6}" for name, count in self.steps]
        lines.append(f"{'rows out':<{width}} {self.rows_out:>6}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot_lengths(
        self, bins: int = 30, title: str = "Lengths before / after cleaning"
    ) -> "matplotlib.figure.Figure":
        """Histograms of the character lengths before and after, on shared bins."""
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 3.5))
        values = self.lengths_before + self.lengths_after
        edges = np.histogram_bin_edges(values, bins=bins) if values else bins
        ax.hist(self.lengths_before, bins=edges, alpha=0.5, label=f"before ({len(self.lengths_before)})")
        ax.hist(self.lengths_after, bins=edges, alpha=0.5, label=f"after ({len(self.lengths_after)})")
        ax.set_xlabel("characters (instruction + input + output)")
        ax.set_ylabel("rows")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig
