"""SFT: conversations -> ChatML tokens with assistant-only labels, training, and answers to the checkable tasks.

The pieces notebook 06 teaches and notebooks 07-11 reuse (the data formats that give the conversations, Alpaca,
ShareGPT and messages, are ``course_utils.chat_formats``):

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
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.chat_formats import check_messages
from course_utils.data import DropReport
from course_utils.loss import IGNORE_INDEX  # the one definition (re-exported: notebook 06 reads sft.IGNORE_INDEX)
from course_utils.tasks import score_answer, task_to_messages

#: The first steps of the committed SFT recipe, logged at every step (in ``DATA_DIR``; written by
#: ``python scripts/bench_outcomes.py --dpo_steps 0 --sft_first_steps``): notebook 06's live re-run is checked against it.
FIRST_STEPS_FILE = "sft_first_steps.json"


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
