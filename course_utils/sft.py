"""SFT: conversations -> ChatML tokens with assistant-only labels, data formats, training and task accuracy.

The pieces notebook 06 teaches and notebooks 07-11 reuse:

* data formats -> one form: :func:`alpaca_to_messages`, :func:`sharegpt_to_messages`, :func:`to_messages`
  (LLaMA-Factory's ``dataset_info.json`` conventions), :func:`check_messages` (clear errors), :func:`load_sft_rows`;
* encoding: :func:`encode_chat` builds ``input_ids`` / ``attention_mask`` / ``labels`` from scratch (labels are
  ``-100`` everywhere except the assistant's reply and its ``<|im_end|>``), :func:`encode_chat_with_template` does the
  same with ``apply_chat_template(..., return_assistant_tokens_mask=True)``; :func:`encode_rows` drops (and counts)
  rows that truncation leaves without a single trained token;
* training: :func:`train_sft` (``Trainer`` on the encoded rows, ``train_on="assistant"`` or ``"all"``);
* evaluation: :func:`generate_answers` (greedy, with the chat template) and :func:`score_tasks` /
  :func:`task_accuracy` (the prompts and scoring of ``course_utils.tasks``);
* display: :func:`mask_html`, a coloured token view of what is trained.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.data import DataFormatError, DropReport, check_text, drop_reason, read_jsonl
from course_utils.loss import IGNORE_INDEX  # the one definition (re-exported: notebook 06 reads sft.IGNORE_INDEX)
from course_utils.tasks import score_answer, task_to_messages

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
#: The first steps of the committed SFT recipe, logged at every step (in ``DATA_DIR``; written by
#: ``python scripts/bench_outcomes.py --dpo_steps 0 --sft_first_steps``): notebook 06's live re-run is checked against it.
FIRST_STEPS_FILE = "sft_first_steps.json"


# ----------------------------------------------------------------------------------------------------------------
# Validation and format conversion
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
    prompt = values["prompt"] + ("\n" + values["query"] if values["query"] else "")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": values["response"]}]
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


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------


def render_chatml(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation (what ``tokenizer.CHAT_TEMPLATE`` renders), built with plain strings."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def encode_chat(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int | None = None, train_on: str = "assistant"
) -> dict[str, list[int]]:
    """Tokenise a conversation in ChatML, from scratch, with labels for SFT.

    Each turn is ``<|im_start|>{role}\\n`` (header) + ``{content}<|im_end|>`` (body) + ``\\n``. With
    ``train_on="assistant"`` labels are the token ids on the assistant bodies (the reply and its ``<|im_end|>``,
    so the model learns to stop) and ``IGNORE_INDEX`` (-100) everywhere else; ``train_on="all"`` trains every
    token. Labels are *not* shifted: the model shifts them (``labels[t]`` is predicted from tokens ``< t``).
    ``max_length`` keeps the first ``max_length`` tokens; the caller must drop rows left with no trained token
    (see :func:`encode_rows`). Returns ``input_ids``, ``attention_mask`` and ``labels`` (lists of equal length).
    """
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all', not {train_on!r}")
    messages = check_messages(list(messages), special_tokens=getattr(tokenizer, "all_special_tokens", ()))

    def ids(text: str) -> list[int]:  # plain text to token ids, no special tokens added
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    im_start, im_end = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    input_ids: list[int] = []
    labels: list[int] = []
    for message in messages:
        header = [im_start] + ids(message["role"] + "\n")  # <|im_start|>user\n: never trained
        body = ids(message["content"]) + [im_end]  # the reply and its <|im_end|>: trained on assistant turns
        newline = ids("\n")
        input_ids += header + body + newline
        trained = body if message["role"] == "assistant" else [IGNORE_INDEX] * len(body)
        labels += [IGNORE_INDEX] * len(header) + trained + [IGNORE_INDEX] * len(newline)
    if train_on == "all":
        labels = list(input_ids)  # every token: headers, bodies and newlines
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def encode_chat_with_template(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int | None = None
) -> dict[str, list[int]]:
    """The library way: ``apply_chat_template(..., return_assistant_tokens_mask=True)``.

    Needs a chat template with ``{% generation %}`` markers (``tokenizer.CHAT_TEMPLATE``, or the model's own when it
    has them: :func:`course_utils.tokenizer.use_training_template`); the mask is 1 on the characters inside them.
    A template without markers raises ``ValueError`` (it would give 0 trained tokens). Returns the same keys as
    :func:`encode_chat` plus ``assistant_masks``.
    """
    from course_utils.tokenizer import require_generation_markers

    require_generation_markers(tokenizer, "encode_chat_with_template (an assistant-only mask)")
    messages = check_messages(list(messages), special_tokens=getattr(tokenizer, "all_special_tokens", ()))
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    labels = [token if bit else IGNORE_INDEX for token, bit in zip(ids, mask)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "assistant_masks": mask}


def encode_rows(
    rows: Iterable[Mapping[str, Any] | Sequence[Mapping[str, str]]],
    tokenizer: Any,
    max_length: int | None = None,
    train_on: str = "assistant",
    source: str = "sft rows",
    method: str = "scratch",
) -> tuple[list[dict[str, list[int]]], DropReport]:
    """Encode many conversations (rows with ``messages``, or message lists); drop and count the unusable ones.

    ``method="scratch"`` uses :func:`encode_chat` (ChatML); ``"template"`` uses the tokenizer's own chat template
    (:func:`encode_chat_with_template`, needs ``{% generation %}`` markers; ``train_on`` must be ``"assistant"``).
    A row whose labels are all ``-100`` after truncation would add nothing but, alone in a batch, make the mean
    loss 0/0 = NaN; it is dropped and counted under ``"no trained token after truncation"``.
    """
    if method not in ("scratch", "template"):
        raise ValueError(f"method must be 'scratch' or 'template', not {method!r}")
    if method == "template" and train_on != "assistant":
        raise ValueError("method='template' only supports train_on='assistant'")
    report = DropReport(source=source)
    encoded: list[dict[str, list[int]]] = []
    for row in rows:
        report.rows_in += 1
        messages = row["messages"] if isinstance(row, Mapping) else row
        if method == "scratch":
            item = encode_chat(messages, tokenizer, max_length=max_length, train_on=train_on)
        else:
            item = encode_chat_with_template(check_messages(list(messages)), tokenizer, max_length=max_length)
            item.pop("assistant_masks")
        if all(label == IGNORE_INDEX for label in item["labels"]):
            full = (
                len(encode_chat_with_template(messages, tokenizer)["input_ids"])
                if method == "template"
                else len(encode_chat(messages, tokenizer)["input_ids"])
            )
            report.drop("no trained token after truncation", f"{full} tokens > max_length={max_length}")
            continue
        encoded.append(item)
    report.rows_out = len(encoded)
    return encoded, report


def mask_html(input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any, title: str | None = None) -> str:
    """HTML showing every token: green background = trained (label != -100), grey = ignored."""
    spans = []
    for token, label in zip(input_ids, labels):
        text = tokenizer.decode([token])
        shown = html.escape(text).replace("\n", "\\n")
        style = "background:#b7e4c7;color:#000" if label != IGNORE_INDEX else "background:#e9ecef;color:#6c757d"
        spans.append(
            f'<span style="{style};border:1px solid #fff;padding:1px 2px;font-family:monospace;'
            f'white-space:pre">{shown}</span>'
        )
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    legend = (
        '<div style="font-size:85%">'
        '<span style="background:#b7e4c7;padding:1px 4px">trained</span> '
        '<span style="background:#e9ecef;padding:1px 4px;color:#6c757d">ignored (-100)</span></div>'
    )
    return f"<div>{head}<div style='line-height:1.9'>{''.join(spans)}</div>{legend}</div>"


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    """What :func:`train_sft` returns: the trained model, the logged losses and the drop report."""

    model: Any
    losses: list[tuple[int, float]]
    train_loss: float
    seconds: float
    report: DropReport
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


def sft_collator(tokenizer: Any) -> Any:
    """Right-pad ``input_ids`` with the pad id, ``attention_mask`` with 0 and ``labels`` with -100."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def add_lora(model: Any, tokenizer: Any, finetuning: Mapping[str, Any], seed: int = 0) -> Any:
    """Wrap ``model`` with the LoRA adapters of a ``scripts/sft.py`` recipe (``metadata["arguments"]["finetuning"]``:
    ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``lora_target`` = ``"all"`` or ``"q_proj,v_proj"``,
    ``lora_chat_tokens``). Seeds first, so the adapters' random init is the same wherever the recipe runs."""
    from peft import LoraConfig, get_peft_model

    from course_utils import env
    from course_utils.tokenizer import chat_token_ids

    target = finetuning.get("lora_target", "all")
    target = "all-linear" if target == "all" else [name.strip() for name in target.split(",") if name.strip()]
    env.seed_everything(seed)
    return get_peft_model(
        model,
        LoraConfig(
            r=finetuning["lora_rank"],
            lora_alpha=finetuning["lora_alpha"],
            lora_dropout=finetuning.get("lora_dropout", 0.0),
            target_modules=target,
            task_type="CAUSAL_LM",
            trainable_token_indices=chat_token_ids(tokenizer) if finetuning.get("lora_chat_tokens") else None,
        ),
    )


def training_arguments(
    *,
    max_steps: int = 200,
    num_train_epochs: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    gradient_accumulation_steps: int = 1,
    warmup_steps: float = 10,
    lr_scheduler_type: str = "cosine",
    weight_decay: float = 0.0,
    logging_steps: int = 20,
    seed: int = 0,
    output_dir: str | Path | None = None,
    device: str = "auto",
    **training_kwargs: Any,
) -> Any:
    """The notebooks' ``TrainingArguments`` for :func:`train_sft`: these keywords over ``env.trainer_defaults``
    (``max_steps > 0`` overrides ``num_train_epochs``); any other ``TrainingArguments`` field in ``training_kwargs``."""
    from transformers import TrainingArguments

    from course_utils import env

    return TrainingArguments(
        output_dir=str(output_dir or Path(env.cache_dir()) / "sft_run"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=1.0,
        max_steps=max_steps if max_steps and max_steps > 0 else -1,
        num_train_epochs=num_train_epochs,
        logging_steps=logging_steps,
        seed=seed,
        **{**env.trainer_defaults(device, seed), **training_kwargs},
    )


def train_sft(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any] | Sequence[Mapping[str, str]]],
    args: Any = None,
    *,
    train_on: str = "assistant",
    max_length: int = 256,
    method: str = "scratch",
    stop_after_steps: int | None = None,
    **training: Any,
) -> SFTResult:
    """Fine-tune ``model`` in place on conversations with ``transformers.Trainer``.

    ``args``: a ``TrainingArguments``, passed to ``Trainer`` unchanged (``scripts/sft.py`` parses it with
    ``HfArgumentParser``); without it, ``training`` are the keywords of :func:`training_arguments`.
    Rows are encoded with :func:`encode_chat` (``train_on="assistant"``: loss on assistant replies only;
    ``"all"``: on every token), over-long rows are dropped and counted, batches are right-padded with
    :func:`sft_collator`. ``stop_after_steps``: stop early after that many optimizer steps while keeping the
    schedule of ``max_steps`` (so the first losses equal those of the full run). No printing; a progress bar unless
    headless (``env.headless()``).
    """
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback

    from course_utils import env, train

    if args is not None and training:
        raise TypeError(
            f"train_sft: pass either a TrainingArguments (args) or its keywords, not both: {sorted(training)}"
        )
    args = args if args is not None else training_arguments(**training)
    started = time.time()
    encoded, report = encode_rows(rows, tokenizer, max_length=max_length, train_on=train_on, method=method)
    if not encoded:
        raise ValueError(f"no usable rows: {report}")
    dataset = Dataset.from_list(encoded)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=sft_collator(tokenizer))
    env.quiet_trainer(trainer)
    if stop_after_steps is not None:

        class _StopAfter(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if state.global_step >= stop_after_steps:
                    control.should_training_stop = True
                return control

        trainer.add_callback(_StopAfter())
    result = trainer.train()
    losses = [(step, round(loss, 4)) for step, loss in train.log_history(trainer)]
    model.eval()
    if not math.isfinite(result.training_loss):
        raise FloatingPointError(f"SFT loss is not finite: {result.training_loss}")
    return SFTResult(
        model=model,
        losses=losses,
        train_loss=float(result.training_loss),
        seconds=time.time() - started,
        report=report,
        num_examples=len(encoded),
        metrics=dict(result.metrics),
    )


# ----------------------------------------------------------------------------------------------------------------
# Generation and evaluation
# ----------------------------------------------------------------------------------------------------------------


def prompt_ids(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> list[int]:
    """Token ids of a prompt for generation: the conversation so far + ``<|im_start|>assistant\\n``."""
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    max_new_tokens: int = 16,
    batch_size: int = 64,
    num_samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Greedy replies to conversations (each a message list ending with a user turn), rendered with the chat
    template, left-padded in batches, stopping at ``<|im_end|>``. Returns the decoded replies (special tokens
    removed, stripped).

    ``num_samples > 0`` samples that many replies per prompt instead (``temperature``, no top-k/top-p, seeded with
    ``seed``) and returns them grouped by prompt: ``len(prompts) * num_samples`` strings.
    """
    import torch
    from transformers import GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos_ids = [im_end] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id not in (None, im_end) else [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    # A checkpoint's own generation config (Qwen2.5-Instruct: sampling, top_k 20, repetition_penalty 1.05) must not
    # leak into "greedy" evaluation: transformers fills every value left at its default from
    # model.generation_config, so that config itself is replaced by a plain one while we generate.
    decoding: dict[str, Any] = {"do_sample": False}
    if num_samples > 0:
        torch.manual_seed(seed)
        decoding = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=num_samples)
    own_config = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(messages, tokenizer) for messages in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                **decoding,
            )
        for row in out[:, width:].tolist():
            if im_end in row:
                row = row[: row.index(im_end)]
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.generation_config = own_config
    if was_training:
        model.train()
    return answers


@dataclass
class TaskScores:
    """Greedy answers to checkable-task rows and whether each was right (``tasks.score_answer``)."""

    tasks: list[str]
    predictions: list[str]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    def by_task(self) -> dict[str, float]:
        """``{"all": accuracy, task: accuracy, ...}`` (tasks sorted by name)."""
        per: dict[str, list[bool]] = {}
        for task, ok in zip(self.tasks, self.correct):
            per.setdefault(task, []).append(ok)
        return {"all": self.accuracy, **{task: sum(v) / len(v) for task, v in sorted(per.items())}}


def score_tasks(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 16,
    batch_size: int = 64,
    system: str | None = None,
) -> TaskScores:
    """Answer each checkable-task row greedily with the chat template and score it (``tasks.score_answer``)."""
    if not rows:
        raise ValueError("score_tasks: no rows")
    prompts = [task_to_messages(row, system=system, with_answer=False) for row in rows]
    predictions = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [score_answer(row["task"], pred, row["answer"]) for row, pred in zip(rows, predictions)]
    return TaskScores([row["task"] for row in rows], predictions, correct)


def task_accuracy(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], **options: Any) -> float:
    """Share of checkable-task rows answered correctly (``options``: those of :func:`score_tasks`, which keeps the
    answers and the per-task accuracies, ``score_tasks(...).by_task()``)."""
    return score_tasks(model, tokenizer, rows, **options).accuracy
