"""Collate: turn a list of tokenised examples into padded (or packed) tensors for a causal LM.

``causal_lm_collate`` is the lecture's ``pad_sequence`` collator, made strict: it pads ``input_ids`` with the
pad id, ``labels`` with ``-100`` and ``attention_mask`` with 0, on the right (training) or on the left
(batched generation). Labels of padding are masked by *position*, never by comparing ids with the pad id, so
an EOS that shares its id with the pad token is still learned.

Batching strategies compared in notebook 03 and ``scripts/bench_batching.py``:

* pad to a fixed length: ``causal_lm_collate(batch, pad_id, pad_to_length=L)``;
* dynamic padding: ``causal_lm_collate(batch, pad_id)`` on random batches (``random_batches``);
* length-grouped sampling: ``length_grouped_batches`` then dynamic padding;
* packing: ``course_utils.data.group_texts`` (documents share a row and attend to each other), or
  ``flatten_collate`` (padding-free, ``position_ids`` restart at every document so attention stays inside it,
  equal to ``transformers.DataCollatorWithFlattening``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from course_utils.loss import IGNORE_INDEX


def _as_long_tensor(values: Any, index: int, name: str) -> torch.Tensor:
    """One field of one example as a 1-D int64 tensor; a clear error for anything else."""
    try:
        tensor = torch.as_tensor(values, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"example {index}, field {name!r}: not a sequence of integers ({exc})") from None
    if tensor.dim() != 1:
        raise ValueError(f"example {index}, field {name!r}: expected a 1-D sequence, got shape {tuple(tensor.shape)}")
    return tensor


def causal_lm_collate(
    batch: Sequence[Mapping[str, Any]],
    pad_id: int,
    label_pad_id: int = IGNORE_INDEX,
    padding_side: str = "right",
    pad_to_length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors of shape [B, T].

    Each example needs ``input_ids``; ``labels`` defaults to a copy of ``input_ids`` (the model shifts them),
    ``attention_mask`` to ones. ``T`` is the longest example, or ``pad_to_length`` (pad to a fixed length),
    rounded up to ``pad_to_multiple_of``. ``padding_side="left"`` is for batched generation.
    Raises ``ValueError`` on an empty batch, a missing pad id, an empty example, fields of different lengths
    or an example longer than ``pad_to_length``.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    if pad_id is None:
        raise ValueError("pad_id is None: the tokenizer has no pad token; add a dedicated one (not the EOS)")
    if len(batch) == 0:
        raise ValueError("causal_lm_collate: empty batch")
    input_ids, labels, attention = [], [], []
    for index, item in enumerate(batch):
        if "input_ids" not in item:
            raise ValueError(f"example {index}: missing field 'input_ids'")
        ids = _as_long_tensor(item["input_ids"], index, "input_ids")
        if ids.numel() == 0:
            raise ValueError(f"example {index}, field 'input_ids': empty sequence")
        lab = _as_long_tensor(item["labels"], index, "labels") if item.get("labels") is not None else ids.clone()
        mask = (
            _as_long_tensor(item["attention_mask"], index, "attention_mask")
            if item.get("attention_mask") is not None
            else torch.ones_like(ids)
        )
        for name, tensor in (("labels", lab), ("attention_mask", mask)):
            if tensor.numel() != ids.numel():
                raise ValueError(
                    f"example {index}, field {name!r}: length {tensor.numel()} != len(input_ids) {ids.numel()}"
                )
        if pad_to_length is not None and ids.numel() > pad_to_length:
            raise ValueError(
                f"example {index}: {ids.numel()} tokens > pad_to_length={pad_to_length}; truncate when tokenising"
            )
        input_ids.append(ids)
        labels.append(lab)
        attention.append(mask)

    padded_input = pad_sequence(input_ids, batch_first=True, padding_value=pad_id, padding_side=padding_side)
    padded_labels = pad_sequence(labels, batch_first=True, padding_value=label_pad_id, padding_side=padding_side)
    padded_attention = pad_sequence(attention, batch_first=True, padding_value=0, padding_side=padding_side)

    target = padded_input.shape[1] if pad_to_length is None else pad_to_length
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    extra = target - padded_input.shape[1]
    if extra > 0:
        pad = (0, extra) if padding_side == "right" else (extra, 0)
        padded_input = torch.nn.functional.pad(padded_input, pad, value=pad_id)
        padded_labels = torch.nn.functional.pad(padded_labels, pad, value=label_pad_id)
        padded_attention = torch.nn.functional.pad(padded_attention, pad, value=0)
    return {"input_ids": padded_input, "attention_mask": padded_attention, "labels": padded_labels}


def labels_masking_pad_id(input_ids: torch.Tensor, pad_id: int, label_pad_id: int = IGNORE_INDEX) -> torch.Tensor:
    """The rule of ``DataCollatorForLanguageModeling(mlm=False)``: labels = input_ids, -100 where the id is the pad id.

    Shown as a pitfall: with ``pad_token = eos_token`` this also masks every real EOS, so the model never
    learns to stop. ``causal_lm_collate`` masks by position instead.
    """
    labels = input_ids.clone()
    labels[input_ids == pad_id] = label_pad_id
    return labels


def padding_fraction(batches: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> float:
    """Share of padding positions (``attention_mask == 0``) among all positions of one or several batches.

    A batch without ``attention_mask`` (packed or flattened) counts as having no padding.
    """
    if isinstance(batches, Mapping):
        batches = [batches]
    pad = total = 0
    for batch in batches:
        total += batch["input_ids"].numel()
        if "attention_mask" in batch and batch["attention_mask"] is not None:
            pad += int((batch["attention_mask"] == 0).sum())
    if total == 0:
        raise ValueError("padding_fraction: no tokens")
    return pad / total


def random_batches(n: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> list[list[int]]:
    """Shuffled indices ``0..n-1`` cut into batches (what ``DataLoader(shuffle=True)`` does)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 8
) -> list[list[int]]:
    """Batches of similar lengths that are still shuffled (the idea of Trainer's ``group_by_length``).

    Shuffle all indices, cut them into mega-batches of ``mega_batch_mult * batch_size``, sort each mega-batch
    by length (longest first), cut it into batches, then shuffle the order of the batches. A larger
    ``mega_batch_mult`` means less padding and less randomness.
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError("batch_size and mega_batch_mult must be >= 1")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def flatten_collate(
    batch: Sequence[Mapping[str, Any]], label_pad_id: int = IGNORE_INDEX, position_ids_start: int = 0
) -> dict[str, torch.Tensor]:
    """Padding-free packing: concatenate the batch into one row of shape [1, N] with restarting ``position_ids``.

    The first label of every example is set to ``label_pad_id`` so that the last token of one document is
    never trained to predict the first token of the next. Hugging Face models that receive ``position_ids``
    and no ``attention_mask`` turn the restarts into a block-diagonal causal mask (no cross-document
    attention). Same output as ``transformers.DataCollatorWithFlattening()``.
    """
    if len(batch) == 0:
        raise ValueError("flatten_collate: empty batch")
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for index, item in enumerate(batch):
        seq = _as_long_tensor(item["input_ids"], index, "input_ids").tolist()
        if not seq:
            raise ValueError(f"example {index}, field 'input_ids': empty sequence")
        lab = _as_long_tensor(item["labels"], index, "labels").tolist() if item.get("labels") is not None else seq
        if len(lab) != len(seq):
            raise ValueError(f"example {index}, field 'labels': length {len(lab)} != len(input_ids) {len(seq)}")
        ids += seq
        labels += [label_pad_id] + lab[1:]
        positions += list(range(position_ids_start, position_ids_start + len(seq)))
    as_row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return {"input_ids": as_row(ids), "labels": as_row(labels), "position_ids": as_row(positions)}


def document_ids_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index of every token of a packed row: a new document starts wherever positions do not go up by 1."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return starts.long().cumsum(-1) - 1


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, T, T] mask (True = may attend): causal and inside the same document, from ``position_ids``."""
    docs = document_ids_from_position_ids(position_ids)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same_doc = docs.unsqueeze(-1) == docs.unsqueeze(-2)
    return same_doc & causal


def pack_to_blocks(
    sequences: Sequence[Sequence[int]],
    block_size: int,
    pad_id: int,
    label_pad_id: int = IGNORE_INDEX,
    labels: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Greedy first-fit-decreasing packing of whole documents into rows of ``block_size`` (no document is cut).

    Returns ``input_ids``, ``labels`` and ``position_ids`` of shape [rows, block_size]. Positions restart at
    every document; the first label of each document and the padding at the end of a row are ``label_pad_id``;
    the padding gets its own positions from 0, so it forms a separate (ignored) document. ``labels`` (one list per
    document, e.g. SFT labels with -100 on the prompt) are kept; without them every token but the first is a target.
    Raises ``ValueError`` for a document longer than ``block_size`` or labels of another length.
    """
    if labels is not None and (
        len(labels) != len(sequences) or any(len(l) != len(s) for l, s in zip(labels, sequences))
    ):
        raise ValueError("labels must have one list per document, each as long as its input_ids")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        size = len(sequences[i])
        if size == 0:
            continue
        if size > block_size:
            raise ValueError(f"document {i}: {size} tokens > block_size={block_size}; truncate it first")
        for r, space in enumerate(free):
            if space >= size:
                rows[r].append(i)
                free[r] -= size
                break
        else:
            rows.append([i])
            free.append(block_size - size)
    ids, out_labels, positions = [], [], []
    for row, space in zip(rows, free):
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []
        for i in row:
            seq = list(sequences[i])
            row_ids += seq
            row_labels += [label_pad_id] + list((labels[i] if labels is not None else seq)[1:])
            row_pos += list(range(len(seq)))
        row_ids += [pad_id] * space
        row_labels += [label_pad_id] * space
        row_pos += list(range(space))
        ids.append(row_ids)
        out_labels.append(row_labels)
        positions.append(row_pos)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long).reshape(len(values), block_size)  # noqa: E731
    return {"input_ids": as_tensor(ids), "labels": as_tensor(out_labels), "position_ids": as_tensor(positions)}


# ----------------------------------------------------------------------------------------------------------------
# Batching strategies, measured (notebook 03 and scripts/bench_batching.py)
# ----------------------------------------------------------------------------------------------------------------

STRATEGIES: tuple[str, ...] = (
    "pad_to_max_length",
    "dynamic_padding",
    "length_grouped",
    "packing_group_texts",
    "packing_position_ids",
    "padding_free_flatten",
)


@dataclass
class StrategyBatches:
    """The batches one strategy makes from a dataset, with its token accounting."""

    strategy: str
    batches: list[dict[str, torch.Tensor]]
    real_tokens: int
    positions: int

    @property
    def padding_fraction(self) -> float:
        """Share of computed positions that hold padding."""
        return 1.0 - self.real_tokens / self.positions if self.positions else 0.0


def build_batches(
    examples: Sequence[Mapping[str, Any]],
    strategy: str,
    batch_size: int,
    pad_id: int,
    max_length: int,
    seed: int = 0,
) -> StrategyBatches:
    """Cut ``examples`` (``input_ids`` [+ ``labels``], each <= ``max_length``) into batches with one strategy.

    ``pad_to_max_length``: random batches padded to ``max_length``; ``dynamic_padding``: random batches padded
    to their longest; ``length_grouped``: :func:`length_grouped_batches` + dynamic padding;
    ``packing_group_texts``: everything concatenated and cut into ``max_length`` blocks (documents cut and
    attending to each other; labels = input_ids; the incomplete last block is dropped);
    ``packing_position_ids``: :func:`pack_to_blocks`, whole documents, attention kept inside each;
    ``padding_free_flatten``: random batches flattened into one row each (:func:`flatten_collate`).
    """
    from course_utils.data import group_texts

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {STRATEGIES}")
    too_long = [i for i, ex in enumerate(examples) if len(ex["input_ids"]) > max_length]
    if too_long:
        raise ValueError(f"{len(too_long)} examples longer than max_length={max_length} (first: {too_long[0]})")
    lengths = [len(ex["input_ids"]) for ex in examples]
    batches: list[dict[str, torch.Tensor]] = []
    if strategy in ("pad_to_max_length", "dynamic_padding", "length_grouped", "padding_free_flatten"):
        order = (
            length_grouped_batches(lengths, batch_size, seed=seed)
            if strategy == "length_grouped"
            else random_batches(len(examples), batch_size, seed=seed)
        )
        for indices in order:
            items = [examples[i] for i in indices]
            if strategy == "padding_free_flatten":
                batches.append(flatten_collate(items))
            else:
                length = max_length if strategy == "pad_to_max_length" else None
                batches.append(causal_lm_collate(items, pad_id, pad_to_length=length))
        real = sum(lengths)
    elif strategy == "packing_group_texts":
        blocks = group_texts({"input_ids": [list(ex["input_ids"]) for ex in examples]}, max_length)
        order = random_batches(len(blocks["input_ids"]), batch_size, seed=seed)
        for indices in order:
            batches.append(
                {
                    "input_ids": torch.tensor([blocks["input_ids"][i] for i in indices]),
                    "labels": torch.tensor([blocks["labels"][i] for i in indices]),
                }
            )
        real = len(blocks["input_ids"]) * max_length
    else:  # packing_position_ids
        packed = pack_to_blocks(
            [list(ex["input_ids"]) for ex in examples],
            max_length,
            pad_id,
            labels=[list(ex["labels"]) for ex in examples] if "labels" in examples[0] else None,
        )
        order = random_batches(packed["input_ids"].shape[0], batch_size, seed=seed)
        for indices in order:
            batches.append({key: value[indices] for key, value in packed.items()})
        real = sum(lengths)
    positions = sum(batch["input_ids"].numel() for batch in batches)
    return StrategyBatches(strategy, batches, real, positions)


def time_training(
    model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], learning_rate: float = 1e-3
) -> float:
    """Seconds for one training pass (forward, backward, AdamW step) over ``batches``; the model is changed.

    Sets ``use_cache=False``: with a KV cache object present, transformers ignores packed ``position_ids``
    and lets documents attend to each other.
    """
    import time

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start
