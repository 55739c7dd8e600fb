"""Unit tests of course_utils.loss: equality with the model's loss and F.cross_entropy, variants, pitfalls."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils import collate, loss, models


@pytest.fixture(scope="module")
def batch(tok):
    texts = ["The capital of Foo is Bar.", "3 + 4 = 7", "Foo is Bar and Bar is Foo; 5 - 2 = 3 ok"]
    items = []
    for text in texts:
        ids = tok(text)["input_ids"]
        items.append({"input_ids": ids, "labels": loss.mask_prompt(ids, 2)})
    return collate.causal_lm_collate(items, tok.pad_token_id)


def test_equals_model_loss_and_cross_entropy(model, batch):
    with torch.no_grad():
        out = model(**batch, use_cache=False)
    ours = loss.causal_lm_loss(out.logits, batch["labels"])
    assert torch.allclose(ours, out.loss, atol=1e-6)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    targets = batch["labels"][:, 1:].reshape(-1)
    assert torch.allclose(ours, F.cross_entropy(logits, targets, ignore_index=-100), atol=1e-6)
    # token count and sum / count
    n = loss.count_target_tokens(batch["labels"])
    assert n == int((targets != -100).sum())
    assert torch.allclose(loss.causal_lm_loss(out.logits, batch["labels"], reduction="sum") / n, ours)
    assert math.isclose(loss.perplexity(ours), math.exp(float(ours)), rel_tol=1e-9)


def test_label_smoothing_matches_torch(model, batch):
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    ours = loss.causal_lm_loss(logits, batch["labels"], label_smoothing=0.1)
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=0.1,
    )
    assert torch.allclose(ours, ref, atol=1e-6)


def test_sequence_mean_and_weights(model, batch):
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    labels = batch["labels"]
    per_tok = loss.per_token_loss(logits, labels)
    counts = (labels[:, 1:] != -100).sum(1)
    per_seq = per_tok.sum(1) / counts
    assert torch.allclose(loss.sequence_mean_loss(logits, labels), per_seq.mean())
    token_mean = loss.causal_lm_loss(logits, labels)
    assert torch.allclose(loss.weighted_causal_lm_loss(logits, labels, torch.ones(3)), token_mean)
    only_first = loss.weighted_causal_lm_loss(logits, labels, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(only_first, per_seq[0])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        loss.weighted_causal_lm_loss(logits, labels, torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        loss.weighted_causal_lm_loss(logits, labels, torch.ones(2))


def test_no_target_raises_instead_of_nan():
    logits = torch.zeros(1, 4, 10)
    labels = torch.full((1, 4), -100)
    assert torch.isnan(F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100))  # what torch does
    with pytest.raises(ValueError, match="no target tokens"):
        loss.causal_lm_loss(logits, labels)
    assert float(loss.causal_lm_loss(logits, labels, reduction="sum")) == 0.0
    with pytest.raises(ValueError, match="no target tokens"):
        loss.sequence_mean_loss(logits, labels)
    with pytest.raises(ValueError, match=r"logits \[B, T, V\]"):
        loss.causal_lm_loss(logits, labels[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        loss.causal_lm_loss(logits, labels, reduction="max")


def test_mask_prompt():
    assert loss.mask_prompt([1, 2, 3, 4], 2) == [-100, -100, 3, 4]
    with pytest.raises(ValueError, match="prompt_length 5 outside"):
        loss.mask_prompt([1, 2], 5)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_gradient_accumulation_normalisation(tok):
    torch.manual_seed(0)
    model = models.build_model("tiny", tok, seed=0)
    short = collate.causal_lm_collate([{"input_ids": [5, 6, 7]}], tok.pad_token_id)
    long = collate.causal_lm_collate([{"input_ids": list(range(10, 40))}], tok.pad_token_id)
    full = collate.causal_lm_collate([{"input_ids": [5, 6, 7]}, {"input_ids": list(range(10, 40))}], tok.pad_token_id)
    model.zero_grad()
    full_loss = model(**full, use_cache=False).loss
    full_loss.backward()
    reference = _grads(model).clone()

    model.zero_grad()
    reported = loss.accumulate_gradients(model, [short, long], "global_tokens")
    assert math.isclose(reported, float(full_loss.detach()), rel_tol=1e-5)
    assert torch.allclose(_grads(model), reference, atol=1e-6)

    model.zero_grad()
    naive = loss.accumulate_gradients(model, [short, long], "per_micro_batch_mean")
    assert not math.isclose(naive, float(full_loss.detach()), rel_tol=1e-2)
    assert not torch.allclose(_grads(model), reference, atol=1e-4)
    with pytest.raises(ValueError, match="unknown normalisation"):
        loss.accumulate_gradients(model, [short], "magic")


def test_ignore_index_has_one_home():
    """-100 is defined once (loss.IGNORE_INDEX) and used by name in the package; the student-facing reference
    solutions and exercise checkers write it out, as a student's own cell would."""
    import re
    from pathlib import Path

    from course_utils import collate, sft

    package = Path(loss.__file__).parent
    homes = [
        p.name for p in package.glob("*.py") if re.search(r"^IGNORE_INDEX\b.*=", p.read_text(encoding="utf-8"), re.M)
    ]
    assert homes == ["loss.py"] and sft.IGNORE_INDEX is collate.IGNORE_INDEX is loss.IGNORE_INDEX == -100
    literal = re.compile(r"(!=|==|ignore_index=|, )\s*-100\b")
    code = {
        p.name: "\n".join(
            line
            for line in p.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith(("#", '"', "``"))
        )
        for p in package.glob("*.py")
        if p.name not in ("solutions.py", "exercises.py")
    }
    assert not [name for name, text in code.items() if literal.search(text)]
