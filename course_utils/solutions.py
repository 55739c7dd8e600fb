"""Reference answers to the notebooks' exercises (checked by :mod:`course_utils.exercises`).

Try the exercise first; the notebooks' answer cells start unsolved on purpose.
"""

from __future__ import annotations

import re
from typing import Any


def redact_id_card(text: str) -> str:
    """01: 17 digits + a digit or X, not inside a longer run of digits."""
    return re.sub(r"(?<!\d)\d{17}[\dXx](?![\dXx])", "<ID>", text)


def assistant_only_labels(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """02: the template's ``assistant_masks`` (needs ``{% generation %}`` markers) turned into labels."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    labels = [token if keep else -100 for token, keep in zip(out["input_ids"], out["assistant_masks"])]
    return list(out["input_ids"]), labels


def my_collate(batch: list[dict[str, list[int]]], pad_id: int, multiple: int) -> dict[str, Any]:
    """03: right-pad to the longest row rounded up to ``multiple``; labels padded with -100, mask with 0."""
    import torch

    longest = max(len(item["input_ids"]) for item in batch)
    width = -(-longest // multiple) * multiple
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {
        key: torch.tensor([item[key] + [value] * (width - len(item[key])) for item in batch])
        for key, value in fill.items()
    }


def my_causal_lm_loss(logits: Any, labels: Any) -> Any:
    """04: position t predicts token t+1: drop the last logit and the first label, ignore -100, mean over tokens."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
