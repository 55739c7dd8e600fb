"""Every exercise checker on a right, a wrong and an unattempted answer (the notebooks' cells start unsolved)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from course_utils import exercises, solutions


def unattempted(*_args):
    raise NotImplementedError("your answer")


@pytest.fixture(scope="module")
def tokenizer():
    from course_utils.tokenizer import load_tiny_tokenizer

    return load_tiny_tokenizer()


def verdict(capsys, check, *args):
    result = check(*args)
    return result, capsys.readouterr().out


def test_redact_id_card(capsys):
    assert verdict(capsys, exercises.check_redact_id_card, solutions.redact_id_card) == (True, "✓ correct\n")
    ok, out = verdict(capsys, exercises.check_redact_id_card, lambda t: re.sub(r"\d{18}", "<ID>", t))
    assert not ok and "12345678901234567890" in out
    ok, out = verdict(capsys, exercises.check_redact_id_card, unattempted)
    assert not ok and "not attempted" in out


def test_assistant_only_labels(capsys, tokenizer):
    assert verdict(capsys, exercises.check_assistant_only_labels, solutions.assistant_only_labels, tokenizer)[0]

    def everything(tok, messages):
        ids = tok.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return list(ids), list(ids)

    def shifted(tok, messages):
        ids, labels = solutions.assistant_only_labels(tok, messages)
        return ids, labels[1:] + [-100]

    for wrong, words in [(everything, "decode to"), (shifted, "NOT shifted")]:
        ok, out = verdict(capsys, exercises.check_assistant_only_labels, wrong, tokenizer)
        assert not ok and words in out
    ok, out = verdict(capsys, exercises.check_assistant_only_labels, unattempted, tokenizer)
    assert not ok and "not attempted" in out


def test_my_collate(capsys, tokenizer):
    from course_utils import sft

    rows = [
        [
            {"role": "user", "content": f"What is {i} + {i}?" + " please" * (i % 7)},
            {"role": "assistant", "content": str(2 * i)},
        ]
        for i in range(50)
    ]
    examples = [sft.encode_chat(m, tokenizer) for m in rows]
    assert verdict(capsys, exercises.check_my_collate, solutions.my_collate, examples, tokenizer)[0]

    def no_multiple(batch, pad_id, multiple):
        return solutions.my_collate(batch, pad_id, 1)

    def pad_labels_with_pad_id(batch, pad_id, multiple):
        out = solutions.my_collate(batch, pad_id, multiple)
        out["labels"][out["attention_mask"] == 0] = pad_id
        return out

    for wrong, words in [(no_multiple, "shape"), (pad_labels_with_pad_id, "labels: values differ")]:
        ok, out = verdict(capsys, exercises.check_my_collate, wrong, examples, tokenizer)
        assert not ok and words in out, out
    ok, out = verdict(capsys, exercises.check_my_collate, unattempted, examples, tokenizer)
    assert not ok and "not attempted" in out


def test_loss(capsys):
    assert verdict(capsys, exercises.check_loss, solutions.my_causal_lm_loss) == (True, "✓ correct\n")

    def unshifted(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def per_row(logits, labels):
        return torch.stack(
            [solutions.my_causal_lm_loss(logits[i : i + 1], labels[i : i + 1]) for i in range(len(labels))]
        ).mean()

    for wrong in (unshifted, per_row):
        ok, out = verdict(capsys, exercises.check_loss, wrong)
        assert not ok and "expected" in out
    ok, out = verdict(capsys, exercises.check_loss, unattempted)
    assert not ok and "not attempted" in out
    ok, out = verdict(capsys, exercises.check_loss, lambda logits, labels: 1.0)
    assert not ok and "scalar tensor" in out
