"""Checkers of the notebooks' exercises (01, 02, 03, 04): each prints what is wrong and returns True or False.

The student's cell starts unsolved (a stub that raises ``NotImplementedError``, or the slides' first draft), so a
checker says "not attempted yet" or names the mistake; the reference answers live apart in
:mod:`course_utils.solutions`. The notebooks assert that each checker passes the reference and fails a known-wrong
answer, and ``tests/test_exercises.py`` tests every checker on a right, a wrong and an unattempted answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from course_utils.loss import IGNORE_INDEX

NOT_ATTEMPTED = "not attempted yet (the cell still raises NotImplementedError): write your answer and run it again"


def _call(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, None)`` after printing why the call failed."""
    try:
        return True, fn(*args)
    except NotImplementedError:
        print(NOT_ATTEMPTED)
    except Exception as error:  # noqa: BLE001 - report any failure to the student
        print(f"✗ raised {type(error).__name__}: {error}")
    return False, None


def _verdict(problems: list[str]) -> bool:
    print("✓ correct" if not problems else "✗ not yet: " + "; ".join(problems))
    return not problems


# --- 01: redact ID card numbers ------------------------------------------------------------------------------------

ID_CARD_CASES: dict[str, str] = {
    "身份证号 11010519491231002X，请核对": "身份证号 <ID>，请核对",
    "ID: 440524188001010014.": "ID: <ID>.",
    "订单号 12345678901234567890 已发货": "订单号 12345678901234567890 已发货",
    "手机 13800138000": "手机 13800138000",
    "两个：110105194912310021 和 44052418800101001x": "两个：<ID> 和 <ID>",
}


def check_redact_id_card(fn: Callable[[str], str]) -> bool:
    """``fn(text)`` replaces 18-character ID numbers (17 digits + digit or X) by ``<ID>`` and nothing longer."""
    problems = []
    for given, wanted in ID_CARD_CASES.items():
        ok, got = _call(fn, given)
        if not ok:
            return False
        if got != wanted:
            problems.append(f"{given!r} -> {got!r}, expected {wanted!r}")
    return _verdict(problems)


# --- 02: assistant-only labels with the chat template --------------------------------------------------------------

LABELS_CONVERSATION: list[dict[str, str]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def check_assistant_only_labels(
    fn: Callable[[Any, list[dict[str, str]]], tuple[list[int], list[int]]], tokenizer: Any
) -> bool:
    """``fn(tokenizer, messages)`` returns ``(input_ids, labels)``: the template's ids, and labels that keep only the
    assistant replies and their ``<|im_end|>`` (-100 elsewhere, not shifted)."""
    from course_utils.tokenizer import render_with_template

    ok, result = _call(fn, tokenizer, LABELS_CONVERSATION)
    if not ok:
        return False
    input_ids, labels = result
    input_ids, labels = list(input_ids), list(labels)
    problems = []
    if input_ids != render_with_template(tokenizer, LABELS_CONVERSATION):
        problems.append("input_ids differ from the chat template's rendering")
    if len(labels) != len(input_ids):
        problems.append(f"labels have length {len(labels)}, input_ids {len(input_ids)}")
    kept = tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
    if kept != "2<|im_end|>4<|im_end|>":
        problems.append(f"the kept labels decode to {kept!r}, expected '2<|im_end|>4<|im_end|>'")
    if any(label not in (-100, token) for label, token in zip(labels, input_ids)):
        problems.append("a kept label differs from its input id (labels are NOT shifted by hand: the model shifts)")
    return _verdict(problems)


# --- 03: a collate function that pads to a multiple ----------------------------------------------------------------


def check_my_collate(
    fn: Callable[[list[dict[str, list[int]]], int, int], dict[str, Any]],
    examples: list[dict[str, list[int]]],
    tokenizer: Any,
) -> bool:
    """``fn(batch, pad_id, multiple)`` equals ``DataCollatorForSeq2Seq(pad_to_multiple_of=multiple)`` on 3 batches."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    for multiple, start in [(8, 0), (16, 5), (8, 40)]:
        items = examples[start : start + 5]
        ok, got = _call(fn, items, tokenizer.pad_token_id, multiple)
        if not ok:
            return False
        want = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=multiple)(items)
        for key in ("input_ids", "attention_mask", "labels"):
            shape = tuple(got[key].shape) if isinstance(got, dict) and key in got else None
            if shape != tuple(want[key].shape):
                return _verdict([f"{key}: shape {shape}, expected {tuple(want[key].shape)} (multiple={multiple})"])
            if not torch.equal(got[key].long(), want[key]):
                return _verdict([f"{key}: values differ from DataCollatorForSeq2Seq (multiple={multiple})"])
    return _verdict([])


# --- 04: the causal-LM loss ----------------------------------------------------------------------------------------


def check_loss(fn: Callable[[Any, Any], Any]) -> bool:
    """``fn(logits [B, T, V], labels [B, T])`` equals the shifted, -100-ignoring, token-mean cross-entropy."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    for b, t, v in [(2, 5, 11), (3, 9, 7), (1, 4, 13)]:
        logits = torch.randn(b, t, v, generator=generator)
        labels = torch.randint(0, v, (b, t), generator=generator)
        labels[0, :2] = -100
        want = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)
        ok, got = _call(fn, logits, labels)
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != ():
            return _verdict(
                [
                    f"expected a scalar tensor, got {type(got).__name__}"
                    f"{tuple(got.shape) if torch.is_tensor(got) else ''}"
                ]
            )
        if not torch.allclose(got, want, atol=1e-5):
            return _verdict(
                [
                    f"for shape {(b, t, v)} got {got.item():.2f}, expected {want.item():.2f} "
                    "(did you shift by one? ignore -100?)"
                ]
            )
    return _verdict([])
