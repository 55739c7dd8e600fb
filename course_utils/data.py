"""Data: strict JSONL reading with errors that name file, line and field; corpus packing for pretraining.

``read_jsonl(path, schema)`` raises :class:`DataFormatError` on the first bad row, or with
``on_error="skip"`` drops bad rows and counts each reason in a :class:`DropReport`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    from transformers import PreTrainedTokenizerBase


class DataFormatError(ValueError):
    """A bad row in a data file: says which file, which line (1-based) and which field.

    ``line=None`` is a problem with the whole file (e.g. it holds no rows).
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {problem}")


@dataclass
class DropReport:
    """Rows read, rows kept, and why the others were dropped (reason -> count)."""

    source: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, detail: str) -> None:
        """Count one dropped row under ``reason`` and keep the first message as an example."""
        self.dropped[reason] += 1
        self.examples.setdefault(reason, detail)

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.rows_in} rows in, {self.rows_out} kept, {sum(self.dropped.values())} dropped"]
        for reason, count in sorted(self.dropped.items()):
            lines.append(f"  - {reason}: {count}  (e.g. {self.examples[reason]})")
        return "\n".join(lines)


#: field name -> expected Python type (``str``, ``list``, ``int``, ...).
Schema = Mapping[str, type]

#: A row check run after the schema: ``validate(row, path, line)`` returns the row to keep (possibly converted) or
#: raises :class:`DataFormatError` naming the field.
Validator = Callable[[dict[str, Any], Path, int], dict[str, Any]]

#: Literal control tokens such as ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, ``<|pad|>`` in user data. A
#: tokenizer turns the text into the real special token, so the model would learn to end a turn mid-reply.
CONTROL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")


def find_control_token(text: str, extra: Iterable[str] = ()) -> str | None:
    """The first literal control token in ``text`` (``<|...|>`` or one of ``extra``, e.g. a tokenizer's specials)."""
    match = CONTROL_TOKEN_RE.search(text)
    if match:
        return match.group(0)
    return next((token for token in extra if token and token in text), None)


def check_text(
    text: Any,
    path: str | Path,
    line: int,
    field_name: str,
    allow_empty: bool = False,
    special_tokens: Iterable[str] = (),
) -> str:
    """A text field must be a string, not blank (unless ``allow_empty``), and hold no literal control token."""
    if not isinstance(text, str):
        raise DataFormatError(path, line, field_name, f"expected str, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise DataFormatError(path, line, field_name, "empty string")
    token = find_control_token(text, special_tokens)
    if token is not None:
        raise DataFormatError(
            path,
            line,
            field_name,
            f"control token: contains the literal special token {token!r} (the tokenizer would "
            "turn it into the real one; remove it or escape it)",
        )
    return text


def _check_row(row: Any, schema: Schema, allow_empty: Iterable[str], path: Path, line: int) -> None:
    if not isinstance(row, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    for name, expected in schema.items():
        if name not in row:
            raise DataFormatError(path, line, name, "missing field")
        value = row[name]
        if expected is str:
            check_text(value, path, line, name, allow_empty=name in allow_empty)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DataFormatError(path, line, name, f"expected {expected.__name__}, got {type(value).__name__}")


#: Problem prefixes that name a drop reason (the text before the first ":" otherwise).
_REASONS: tuple[str, ...] = (
    "not UTF-8",
    "invalid JSON",
    "missing field",
    "expected str",
    "expected a list",
    "expected an object",
    "expected a JSON object",
    "empty string",
    "control token",
    "starts with a line break",
    "unknown role",
    "no assistant turn",
    "alternate",
    "last turn",
    "system message",
    "empty conversation",
    "unknown format",
    "identical",
    "expected",
)


_INDEX_RE = re.compile(r"\[\d+\]")


def drop_reason(error: DataFormatError) -> str:
    """The skip-mode reason of an error: the kind of problem and the field, with list indices folded.

    ``messages[3].content: empty string`` and ``messages[1].content: empty string`` both count under
    ``"empty string (messages[].content)"``.
    """
    kind = next((key for key in _REASONS if key in error.problem), re.split(r"[:,(]", error.problem)[0].strip())
    if not error.field:
        return kind
    return f"{kind} ({_INDEX_RE.sub('[]', error.field)})"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, line bytes)`` without the line ending (LF or CRLF) and without a leading UTF-8 BOM."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, raw.rstrip(b"\r\n")


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            path,
            number,
            None,
            f"not UTF-8: byte {raw[exc.start : exc.start + 1]!r} at byte {exc.start + 1} of the line",
        ) from None


def _parse_line(raw: bytes, path: Path, number: int) -> Any:
    text = _decode_line(raw, path, number)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, number, None, f"invalid JSON: {exc.msg} at column {exc.pos + 1}") from None


def read_jsonl(
    path: str | Path,
    schema: Schema | None = None,
    on_error: str = "raise",
    allow_empty: Iterable[str] = (),
    *,
    validate: Validator | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], DropReport]:
    """Read a JSONL file strictly: the one JSONL reader of the project (every loader calls it).

    Each line must be valid UTF-8 (a leading byte-order mark and CRLF line endings are accepted) and valid JSON, an
    object with every ``schema`` field of the right type and (for strings) neither blank, unless listed in
    ``allow_empty``, nor holding a literal control token such as ``<|im_end|>``. ``validate(row, path, line)`` then
    checks (or converts) the row further, raising :class:`DataFormatError`. ``on_error="raise"`` raises
    :class:`DataFormatError` naming file, 1-based line and field; ``on_error="skip"`` drops the row and counts the
    reason (with the field) in the returned :class:`DropReport`. Blank lines are ignored; ``limit`` stops after that
    many kept rows. A file that yields no row (empty, only blank lines, or every row dropped) raises
    :class:`DataFormatError` naming the file: an empty dataset is never a silent success.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    report = DropReport(source=path.name)
    rows: list[dict[str, Any]] = []
    allow_empty = set(allow_empty)
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        if limit is not None and len(rows) >= limit:
            break
        report.rows_in += 1
        try:
            row = _parse_line(raw, path, number)
            _check_row(row, schema or {}, allow_empty, path, number)
            if validate is not None:
                row = validate(row, path, number)
        except DataFormatError as error:
            if on_error == "raise":
                raise
            report.drop(drop_reason(error), f"line {number}: {error.problem}")
            continue
        rows.append(row)
    report.rows_out = len(rows)
    if not rows:
        why = (
            "the file holds no rows (it is empty or only blank lines)"
            if report.rows_in == 0
            else f"all {report.rows_in} rows were dropped: {dict(report.dropped)}"
        )
        raise DataFormatError(path, None, None, f"empty dataset: {why}")
    return rows, report


def load_corpus(
    files: str | Path | Sequence[str | Path],
    text_field: str = "text",
    on_error: str = "raise",
    limit: int | None = None,
) -> "datasets.Dataset":
    """A pretraining corpus as a ``datasets.Dataset``, validated before ``datasets`` sees it.

    JSONL files go through :func:`read_jsonl` with ``{text_field: str}`` (a row whose text is missing, blank, not a
    string or holds a literal ``<|endoftext|>`` is refused, or dropped and counted with ``on_error="skip"``; the
    reports are printed); ``.txt`` files give one document per non-blank line (UTF-8, BOM and CRLF accepted). An
    empty file raises :class:`DataFormatError` naming it. ``limit`` keeps the first N documents in all. Replaces
    ``datasets.load_dataset("json", ...)``, which fails on such files deep inside ``datasets``
    (``StopIteration``, ``TypeError: TextEncodeInput``) or silently fills a missing column with ``None``.
    """
    from datasets import Dataset

    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if not paths:
        raise ValueError("load_corpus: no files given")
    rows: list[dict[str, Any]] = []
    for path in paths:
        remaining = None if limit is None else limit - len(rows)
        if remaining is not None and remaining <= 0:
            break
        if path.suffix == ".txt":
            documents = itertools.islice(((n, raw) for n, raw in _lines(path) if raw.strip()), remaining)
            part = [
                {text_field: check_text(_decode_line(raw, path, number), path, number, text_field)}
                for number, raw in documents
            ]
            if not part:
                raise DataFormatError(path, None, None, "empty dataset: the file holds no non-blank line")
        else:
            part, report = read_jsonl(path, {text_field: str}, on_error=on_error, limit=remaining)
            if report.dropped:
                print(report)
        rows += part
    return Dataset.from_list(rows)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as UTF-8 JSONL (``ensure_ascii=False``), one object per line, ``\\n`` line endings on every OS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def group_texts(examples: Mapping[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Pack tokenised documents into blocks of ``block_size`` (as in ``run_clm.py``); labels = input_ids.

    Concatenates every list field, drops the remainder that does not fill a whole block, and copies
    ``input_ids`` to ``labels`` (the model shifts labels itself).
    """
    concatenated = {key: [token for sequence in examples[key] for token in sequence] for key in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    result = {
        key: [values[start : start + block_size] for start in range(0, total, block_size)]
        for key, values in concatenated.items()
    }
    result["labels"] = [list(block) for block in result["input_ids"]]
    return result


def split_documents(
    dataset: "datasets.Dataset", test_size: float, seed: int = 0, text_field: str = "text"
) -> "datasets.DatasetDict":
    """Split a corpus into ``train`` / ``test`` *documents* before packing, with every copy of a text on one side.

    Packing first and splitting blocks second puts the two halves of a document cut by a block boundary on both
    sides; splitting rows puts exact duplicates on both sides. Here the distinct texts are shuffled with ``seed``
    and the first ``test_size`` of them (a fraction, as in ``train_test_split``) become the test side."""
    import datasets
    import numpy as np

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    texts = dataset[text_field]
    distinct = list(dict.fromkeys(texts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = max(1, round(test_size * len(distinct)))
    test_texts = {distinct[i] for i in order[:n_test]}
    test_rows = [i for i, text in enumerate(texts) if text in test_texts]
    train_rows = [i for i, text in enumerate(texts) if text not in test_texts]
    return datasets.DatasetDict(train=dataset.select(train_rows), test=dataset.select(test_rows))


def tokenize_and_pack(
    dataset: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int = 128,
    text_field: str = "text",
    num_proc: int | None = None,
    document_ids: bool = False,
) -> "datasets.Dataset":
    """Tokenise a text dataset (``<|endoftext|>`` after each document) and pack it into fixed blocks.

    ``document_ids=True`` adds a ``document`` column: for every token of a block, the row index of the document it
    came from (to tell which documents a split of the blocks trains on). Packing runs per ``map`` batch of 1,000
    documents and drops each batch's remainder, as ``run_clm.py`` does."""
    from course_utils.tokenizer import ENDOFTEXT

    separator = tokenizer.convert_tokens_to_ids(ENDOFTEXT)

    def tokenize(batch: dict[str, list[str]], indices: list[int]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch[text_field], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [sequence + [separator] for sequence in ids]}
        if document_ids:
            out["document"] = [[index] * len(sequence) for index, sequence in zip(indices, out["input_ids"])]
        return out

    tokenized = dataset.map(
        tokenize, batched=True, with_indices=True, remove_columns=dataset.column_names, num_proc=num_proc, desc=None
    )
    return tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": block_size}, num_proc=num_proc, desc=None)
