"""Tests of course_utils.peft_methods: the fine-tuning methods notebook 07 and scripts/bench_peft.py compare.

Uses the shared tiny tokenizer and model of ``conftest.py`` (``tok``, ``model``); ``base`` is a fresh copy per test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from course_utils import lora, peft_methods
from course_utils.tokenizer import chat_token_ids


@pytest.fixture()
def base(model):
    return copy.deepcopy(model)


def test_bottleneck_adapter_identity_at_init(base, input_ids):
    adapted = copy.deepcopy(base)
    n = peft_methods.add_bottleneck_adapters(adapted, bottleneck=8)
    assert n == base.config.num_hidden_layers
    h = base.config.hidden_size
    assert lora.count_trainable(adapted)[0] == n * (2 * h * 8 + 8 + h)
    assert lora.max_logit_diff(adapted, base, input_ids) == 0.0


def test_train_and_measure_counts_bytes(base, tok):
    examples = [{"input_ids": list(range(4, 30)), "labels": [-100] * 10 + list(range(14, 30))} for _ in range(8)]
    batches = peft_methods.make_batches(examples, 4, tok.pad_token_id)
    model = peft_methods.prepare_method("lora", copy.deepcopy(base))
    _, result = peft_methods.train_and_measure("lora", model, batches, batches[:1], steps=4)
    n_tensors = 2 * 2 * base.config.num_hidden_layers
    assert result.trainable_params == lora.lora_param_formula(base.config, ("q_proj", "v_proj"), 8)
    assert result.grad_bytes == 4 * result.trainable_params
    assert result.optimizer_state_bytes == 8 * result.trainable_params + 4 * n_tensors  # exp_avg, exp_avg_sq, step
    assert result.activation_bytes > 0
    assert result.eval_loss_after < result.eval_loss_before


def test_trainable_tokens_train_only_the_chat_token_rows(base, tok):
    """lora + trainable_tokens: LoRA matrices plus the ChatML rows of the (tied) embedding, nothing else."""
    ids = chat_token_ids(tok)
    assert ids == tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    plain = peft_methods.prepare_method("lora", copy.deepcopy(base))
    model = peft_methods.prepare_method("lora", copy.deepcopy(base), trainable_tokens=ids)
    hidden = base.config.hidden_size
    assert lora.count_trainable(model)[0] == lora.count_trainable(plain)[0] + len(ids) * hidden
    batch = {"input_ids": torch.tensor([[ids[0], 10, 11, ids[1], 12]])}
    batch["labels"] = batch["input_ids"].clone()
    model(**batch).loss.backward()
    deltas = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    assert len(deltas) == 1 and deltas[0].shape == (len(ids), hidden) and deltas[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="LoRA option"):
        peft_methods.prepare_method("ia3", copy.deepcopy(base), trainable_tokens=ids)


def test_train_and_measure_cosine_schedule_ends_at_zero(base, tok):
    """schedule="cosine": warm-up then decay to 0 (Trainer's cosine); "constant" keeps the rate (the default)."""
    examples = [{"input_ids": list(range(4, 20)), "labels": list(range(4, 20))} for _ in range(4)]
    batches = peft_methods.make_batches(examples, 2, tok.pad_token_id)
    rates = {}
    for schedule in ("constant", "cosine"):
        model = peft_methods.prepare_method("lora", copy.deepcopy(base))
        seen = []
        original = torch.optim.AdamW.step

        def step(self, *args, **kwargs):  # patched and restored within this iteration, so its loop variables hold
            seen.append(self.param_groups[0]["lr"])  # noqa: B023
            return original(self, *args, **kwargs)  # noqa: B023

        torch.optim.AdamW.step = step
        try:
            peft_methods.train_and_measure(
                "lora",
                model,
                batches,
                batches[:1],
                steps=6,
                lr=1e-2,
                schedule=schedule,
                warmup_steps=2 if schedule == "cosine" else 0,
            )
        finally:
            torch.optim.AdamW.step = original
        rates[schedule] = seen
    assert rates["constant"] == [1e-2] * 6
    assert rates["cosine"][0] == 0.0 and rates["cosine"][2] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(rates["cosine"][2:], rates["cosine"][3:])) and rates["cosine"][-1] < 2e-3
    with pytest.raises(ValueError, match="schedule"):
        peft_methods.train_and_measure("lora", model, batches, batches[:1], steps=1, schedule="linear")


def test_format_table_shows_accuracy_only_when_measured():
    """Notebook 07's 10-step table compares resources and leaves accuracy out; bench_peft's table keeps it."""

    def result(method, accuracy=None):
        return peft_methods.MethodResult(
            method, 10, 100, 400, 40, 80, 1000, 0.01, eval_loss_before=5.0, eval_loss_after=4.0, accuracy=accuracy
        )

    plain = peft_methods.format_table([result("full"), result("lora")])
    assert "accuracy" not in plain and plain.splitlines()[2].endswith("| 5.00 -> 4.00 |")
    mixed = peft_methods.format_table([result("full", 0.25), result("lora")], rounded=False)
    header, _, full_row, lora_row = mixed.splitlines()
    assert header.endswith("| eval loss | accuracy |") and "s/step" in header
    assert full_row.endswith("| 0.250 |") and lora_row.endswith("| - |")
