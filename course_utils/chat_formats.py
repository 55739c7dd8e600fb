"""Chat data formats -> one form: Alpaca, ShareGPT and messages rows as ``[{"role", "content"}, ...]``.

The conventions are LLaMA-Factory's (``dataset_info.json``: ``formatting``, ``columns``, ``tags``), so a dataset
described for LLaMA-Factory loads here unchanged: :func:`alpaca_to_messages`, :func:`sharegpt_to_messages`,
:func:`to_messages` (any of the three, by ``dataset_info`` entry or by its keys), :func:`check_messages` (an error
naming file, line and field, e.g. ``messages[2].role``), :func:`load_sft_rows` / :func:`load_named_datasets` on top of
the one JSONL reader ``data.read_jsonl``. Notebook 01 converts the formats, notebook 06 trains on them, ``sft``
encodes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from course_utils.data import DataFormatError, DropReport, check_text, drop_reason, read_jsonl

ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: LLaMA-Factory's defaults for ShareGPT-style data (``dataset_info.json`` ``tags``).
SHAREGPT_TAGS: dict[str, str] = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
#: LLaMA-Factory's default Alpaca columns (``dataset_info.json`` ``columns``).
ALPACA_COLUMNS: dict[str, str] = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def check_content(
    content: Any, path: str | Path, line: int, field_name: str, role: str, special_tokens: Iterable[str] = ()
) -> str:
    """One message's text: a string; not blank (except a system prompt); no literal control token such as
    ``<|im_end|>`` (it would become the real token and the model would learn to end a turn mid-reply); and not
    starting with a line break.

    Why the last rule: the chat template renders ``<|im_start|>assistant\n`` + content, and a byte-level BPE such as
    Qwen2's merges the header's ``\n`` with a leading ``\n`` of the content into one token (``\n\n``). The
    template's mask would then train a token holding part of the header, and the from-scratch ids (header and
    content tokenised apart) would no longer start with the inference prompt. Strip the leading line break.
    """
    text = check_text(content, path, line, field_name, allow_empty=role == "system", special_tokens=special_tokens)
    leading = text[: len(text) - len(text.lstrip())]
    if "\n" in leading or "\r" in leading:
        raise DataFormatError(
            path,
            line,
            field_name,
            "starts with a line break: after the role header it merges with the header's newline "
            "into one token, so masks and prompts would disagree; strip it",
        )
    return text


def check_messages(
    messages: Any,
    path: str | Path = "<messages>",
    line: int = 0,
    field_name: str = "messages",
    require_assistant: bool = True,
    special_tokens: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Validate a conversation and return it as a list of ``{"role", "content"}`` dicts.

    Rules: a non-empty list of objects with a ``role`` in :data:`ROLES` and a string ``content`` that passes
    :func:`check_content` (not blank except for ``system``, no literal control token, no leading line break);
    ``system`` only first; then ``user`` and ``assistant`` alternate, starting with ``user``; at least one
    ``assistant`` turn and the last turn is the assistant's (else nothing at the end would be trained). An empty
    assistant reply is refused: it would train only ``<|im_end|>``, i.e. teach the model to say nothing.
    ``special_tokens`` adds a tokenizer's own special tokens to the control-token check. Raises
    :class:`DataFormatError` naming ``path``, ``line`` and the field, e.g. ``messages[2].role``.
    """
    if not isinstance(messages, list):
        raise DataFormatError(path, line, field_name, f"expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise DataFormatError(path, line, field_name, "empty conversation")
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        where = f"{field_name}[{index}]"
        if not isinstance(message, Mapping):
            raise DataFormatError(path, line, where, f"expected an object, got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise DataFormatError(path, line, f"{where}.{key}", "missing field")
        role = message.get("role")
        content = message.get("content")
        if not isinstance(role, str):
            raise DataFormatError(path, line, f"{where}.role", f"expected str, got {type(role).__name__}")
        if role not in ROLES:
            raise DataFormatError(path, line, f"{where}.role", f"unknown role {role!r} (expected one of {ROLES})")
        check_content(content, path, line, f"{where}.content", role, special_tokens)
        if role == "system" and index != 0:
            raise DataFormatError(path, line, f"{where}.role", "a system message is only allowed first")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    if require_assistant and not any(m["role"] == "assistant" for m in turns):
        raise DataFormatError(path, line, field_name, "no assistant turn: nothing to train on")
    for offset, message in enumerate(turns):
        expected = "user" if offset % 2 == 0 else "assistant"
        if message["role"] != expected:
            index = offset + (len(out) - len(turns))
            raise DataFormatError(
                path,
                line,
                f"{field_name}[{index}].role",
                f"expected {expected!r} (user and assistant alternate), got {message['role']!r}",
            )
    if require_assistant:
        if turns[-1]["role"] != "assistant":
            raise DataFormatError(
                path, line, f"{field_name}[{len(out) - 1}].role", "the last turn must be the assistant's"
            )
    return out


def alpaca_prompt(instruction: str, query: str | None = None) -> str:
    """The user turn of an Alpaca row, as LLaMA-Factory writes it: ``instruction``, then ``input`` on a new line
    (omitted when empty). The checkable tasks are Alpaca rows, so ``tasks.task_prompt`` is this too."""
    return instruction + ("\n" + query if query else "")


def alpaca_to_messages(
    row: Mapping[str, Any], columns: Mapping[str, str] | None = None, path: str | Path = "<row>", line: int = 0
) -> list[dict[str, str]]:
    """Alpaca ``instruction/input/output`` (+ optional ``system``, ``history``) -> messages.

    As LLaMA-Factory does: the user turn is ``instruction + "\\n" + input`` (input omitted when empty), ``history``
    is a list of ``[user, assistant]`` pairs placed before it. ``columns`` renames fields like ``dataset_info.json``.
    """
    cols = dict(ALPACA_COLUMNS, **(columns or {}))
    for key in ("prompt", "response"):
        name = cols[key]
        if name not in row:
            raise DataFormatError(path, line, name, "missing field")
    values = {}
    for key in ("prompt", "query", "response", "system"):
        name = cols[key]
        value = row.get(name)
        if value is None and key in ("query", "system"):
            value = ""
        role = {"prompt": "user", "response": "assistant"}.get(key, "system")
        values[key] = check_content(value, path, line, name, role)
    messages: list[dict[str, str]] = []
    if values["system"]:
        messages.append({"role": "system", "content": values["system"]})
    history = row.get(cols["history"]) or []
    if not isinstance(history, list):
        raise DataFormatError(path, line, cols["history"], f"expected a list of pairs, got {type(history).__name__}")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise DataFormatError(path, line, f"{cols['history']}[{index}]", "expected a [user, assistant] pair of str")
        for side, role in enumerate(("user", "assistant")):
            check_content(pair[side], path, line, f"{cols['history']}[{index}][{side}]", role)
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [
        {"role": "user", "content": alpaca_prompt(values["prompt"], values["query"])},
        {"role": "assistant", "content": values["response"]},
    ]
    return messages


def sharegpt_to_messages(
    row: Mapping[str, Any],
    column: str = "conversations",
    tags: Mapping[str, str] | None = None,
    system_column: str | None = "system",
    path: str | Path = "<row>",
    line: int = 0,
) -> list[dict[str, str]]:
    """ShareGPT ``conversations: [{"from": "human"|"gpt"|"system", "value": ...}]`` -> messages.

    ``tags`` follows ``dataset_info.json`` (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``,
    ``system_tag``); an unknown ``from`` value raises naming the field (``conversations[3].from``).
    """
    t = dict(SHAREGPT_TAGS, **(tags or {}))
    role_of = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system"}
    turns = row.get(column)
    if turns is None:
        raise DataFormatError(path, line, column, "missing field")
    if not isinstance(turns, list):
        raise DataFormatError(path, line, column, f"expected a list, got {type(turns).__name__}")
    messages: list[dict[str, str]] = []
    system = row.get(system_column) if system_column else None
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, Mapping):
            raise DataFormatError(path, line, where, f"expected an object, got {type(turn).__name__}")
        source = turn.get(t["role_tag"])
        if source not in role_of:
            raise DataFormatError(
                path, line, f"{where}.{t['role_tag']}", f"unknown role {source!r} (expected one of {sorted(role_of)})"
            )
        content = check_content(turn.get(t["content_tag"]), path, line, f"{where}.{t['content_tag']}", role_of[source])
        messages.append({"role": role_of[source], "content": content})
    return messages


def detect_format(row: Mapping[str, Any], path: str | Path = "<row>", line: int = 0) -> str:
    """``"messages"``, ``"sharegpt"`` or ``"alpaca"`` from the keys of one row (:class:`DataFormatError` if none)."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    raise DataFormatError(
        path, line, None, f"unknown format: no 'messages', 'conversations' or 'instruction' key (keys: {sorted(row)})"
    )


def to_messages(
    row: Mapping[str, Any], spec: Mapping[str, Any] | str | None = None, path: str | Path = "<row>", line: int = 0
) -> list[dict[str, str]]:
    """Convert one row in any supported format to validated messages.

    ``spec`` is a format name (``"alpaca"``, ``"sharegpt"``, ``"messages"``, ``None`` = detect) or a
    ``dataset_info.json`` entry (``formatting``, ``columns``, ``tags``). LLaMA-Factory calls both ShareGPT and
    OpenAI-style ``messages`` "sharegpt"; the tags say which keys hold the role and the content.
    """
    if not isinstance(row, Mapping):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    if spec is None or isinstance(spec, str):
        fmt = spec or detect_format(row, path, line)
        spec = {"formatting": "alpaca"} if fmt == "alpaca" else {"formatting": "sharegpt"}
        if fmt == "messages":
            spec = {
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "system_tag": "system",
                },
            }
        elif fmt not in ("alpaca", "sharegpt"):
            raise ValueError(f"unknown format {fmt!r}")
    columns = dict(spec.get("columns") or {})
    if spec.get("formatting", "alpaca") == "alpaca":
        messages = alpaca_to_messages(row, columns, path=path, line=line)
        field_name = "messages"
    else:
        column = columns.get("messages", "conversations")
        messages = sharegpt_to_messages(
            row,
            column=column,
            tags=spec.get("tags"),
            system_column=columns.get("system", "system"),
            path=path,
            line=line,
        )
        field_name = column
    return check_messages(messages, path=path, line=line, field_name=field_name)


def load_sft_rows(
    path: str | Path, spec: Mapping[str, Any] | str | None = None, on_error: str = "raise", limit: int | None = None
) -> tuple[list[dict[str, Any]], DropReport]:
    """Read a JSONL file of conversations in any supported format (with :func:`course_utils.data.read_jsonl`).

    Returns ``(rows, report)``: each row is the original object plus a validated ``"messages"`` list.
    ``on_error="raise"`` raises :class:`DataFormatError` (file, line, field) on the first bad row;
    ``on_error="skip"`` drops it and counts the reason and field in ``report``. A file with no usable row raises.
    """

    def convert(row: dict[str, Any], file: Path, number: int) -> dict[str, Any]:
        return {**row, "messages": to_messages(row, spec, path=file, line=number)}

    return read_jsonl(path, on_error=on_error, validate=convert, limit=limit)


def convert_rows(
    rows: Iterable[Mapping[str, Any]],
    spec: Mapping[str, Any] | str | None = None,
    source: str = "rows",
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], DropReport]:
    """:func:`to_messages` on in-memory rows (e.g. a ``datasets.Dataset`` after cleaning): the same checks as
    :func:`load_sft_rows`; bad rows are dropped and counted (``line`` = 1-based row number) or raised."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    report = DropReport(source=source)
    out: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=1):
        report.rows_in += 1
        try:
            out.append({**row, "messages": to_messages(row, spec, path=source, line=number)})
        except DataFormatError as error:
            if on_error == "raise":
                raise
            report.drop(drop_reason(error), f"row {number}: {error.problem}")
    report.rows_out = len(out)
    if not out:
        raise DataFormatError(source, None, None, f"empty dataset: all {report.rows_in} rows were dropped")
    return out, report


def load_dataset_info(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a LLaMA-Factory ``dataset_info.json`` (dataset name -> ``file_name``, ``formatting``, ``columns``...)."""
    with open(path, encoding="utf-8") as handle:
        info = json.load(handle)
    for name, entry in info.items():
        if "file_name" not in entry:
            raise DataFormatError(path, 0, f"{name}.file_name", "missing field")
        if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
            raise DataFormatError(path, 0, f"{name}.formatting", f"unknown formatting {entry['formatting']!r}")
    return info


def load_named_datasets(
    names: str | Sequence[str],
    dataset_info: str | Path,
    dataset_dir: str | Path,
    on_error: str = "skip",
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[DropReport]]:
    """Load and concatenate datasets by name (comma-separated, as in LLaMA-Factory's ``dataset:``)."""
    info = load_dataset_info(dataset_info)
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    rows: list[dict[str, Any]] = []
    reports: list[DropReport] = []
    for name in names:
        if name not in info:
            raise KeyError(f"dataset {name!r} is not in {dataset_info} (known: {sorted(info)})")
        part, report = load_sft_rows(Path(dataset_dir) / info[name]["file_name"], info[name], on_error, limit)
        rows += part
        reports.append(report)
    return rows, reports
