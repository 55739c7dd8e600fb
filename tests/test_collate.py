"""Unit tests of course_utils.collate: equality with the transformers collators, masks, strategies, bad input."""

import pytest
import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
)

from course_utils import collate

TEXTS = ["The capital of Foo is Bar.", "你好，世界。 3 + 4 = 7", "Foo is Bar and Bar is Foo; 5 - 2 = 3 ok"]


@pytest.fixture()
def features(tok):
    feats = []
    for text in TEXTS:
        enc = tok(text)
        labels = list(enc["input_ids"])
        labels[:2] = [-100, -100]  # a masked "prompt"
        feats.append(
            {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]), "labels": labels}
        )
    return feats


@pytest.mark.parametrize("side", ["right", "left"])
def test_equals_seq2seq_collator(tok, features, side):
    tok.padding_side = side
    try:
        ref = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(features)
    finally:
        tok.padding_side = "right"
    ours = collate.causal_lm_collate(features, tok.pad_token_id, padding_side=side)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], ref[key]), key


def test_equals_with_padding_and_lm_collators(tok, features):
    no_labels = [{k: v for k, v in f.items() if k != "labels"} for f in features]
    ours = collate.causal_lm_collate(no_labels, tok.pad_token_id)
    padded = DataCollatorWithPadding(tok)(no_labels)
    lm = DataCollatorForLanguageModeling(tok, mlm=False)(no_labels)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(ours[key], padded[key]) and torch.equal(ours[key], lm[key])
    assert torch.equal(ours["labels"], lm["labels"])


def test_pad_to_length_and_multiple(tok, features):
    out = collate.causal_lm_collate(features, tok.pad_token_id, pad_to_length=32)
    assert out["input_ids"].shape == (3, 32)
    ref = DataCollatorForSeq2Seq(tok, padding="max_length", max_length=32)(features)
    assert all(torch.equal(out[k], ref[k]) for k in out)
    out8 = collate.causal_lm_collate(features, tok.pad_token_id, pad_to_multiple_of=8)
    assert out8["input_ids"].shape[1] % 8 == 0
    ref8 = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8)(features)
    assert all(torch.equal(out8[k], ref8[k]) for k in out8)


def test_padding_is_masked_by_position_even_when_pad_equals_eos(tok):
    eos = tok.eos_token_id
    batch = [{"input_ids": [5, 6, eos]}, {"input_ids": [7, eos]}]
    ours = collate.causal_lm_collate(batch, pad_id=eos)  # the pad = eos setting
    assert ours["labels"].tolist() == [[5, 6, eos], [7, eos, -100]]  # every real EOS is kept
    naive = collate.labels_masking_pad_id(ours["input_ids"], pad_id=eos)
    assert naive.tolist() == [[5, 6, -100], [7, -100, -100]]  # the pitfall: EOS masked out


def test_padding_does_not_change_the_loss(model, tok, features):
    batch = collate.causal_lm_collate(features, tok.pad_token_id)
    with torch.no_grad():
        batched = model(**batch, use_cache=False).logits
        for i, f in enumerate(features):
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            assert torch.allclose(batched[i, : len(f["input_ids"])], alone, atol=1e-4)


def test_flatten_equals_transformers_and_blocks_cross_document_attention(model, tok, features):
    ours = collate.flatten_collate(features)
    ref = DataCollatorWithFlattening()(features)
    assert set(ours) == {"input_ids", "labels", "position_ids"}
    assert all(torch.equal(ours[k], ref[k]) for k in ours)
    with torch.no_grad():
        alone = torch.cat(
            [model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0] for f in features]
        )
        packed = model(input_ids=ours["input_ids"], position_ids=ours["position_ids"], use_cache=False).logits[0]
        leaky = model(input_ids=ours["input_ids"], use_cache=False).logits[0]  # no position_ids: one long document
    assert torch.allclose(packed, alone, atol=1e-4)
    assert not torch.allclose(leaky, alone, atol=1e-2)


def test_packed_causal_mask():
    pos = torch.tensor([[0, 1, 0, 1, 2]])
    assert collate.document_ids_from_position_ids(pos).tolist() == [[0, 0, 1, 1, 1]]
    mask = collate.packed_causal_mask(pos)[0]
    assert mask.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


def test_pack_to_blocks_keeps_documents_whole():
    seqs = [[1] * 5, [2] * 3, [3] * 4, [4] * 2]
    out = collate.pack_to_blocks(seqs, block_size=8, pad_id=9)
    assert out["input_ids"].shape == (2, 8)
    assert sorted(out["input_ids"].flatten().tolist()) == sorted(sum(seqs, []) + [9, 9])
    assert out["input_ids"].tolist()[0] == [1] * 5 + [2] * 3
    assert out["position_ids"].tolist()[0] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert out["labels"].tolist()[0] == [-100, 1, 1, 1, 1, -100, 2, 2]
    with pytest.raises(ValueError, match="document 0: 9 tokens > block_size=8"):
        collate.pack_to_blocks([[1] * 9], block_size=8, pad_id=0)


def test_pack_to_blocks_keeps_sft_labels():
    """Packing SFT rows must keep their -100 prompt labels (else the packed run trains on the prompts)."""
    seqs = [[5, 6, 7, 8], [1, 2, 3]]
    sft_labels = [[-100, -100, 7, 8], [-100, 2, 3]]
    out = collate.pack_to_blocks(seqs, block_size=8, pad_id=0, labels=sft_labels)
    assert out["labels"].tolist()[0] == [-100, -100, 7, 8, -100, 2, 3, -100]
    with pytest.raises(ValueError, match="as long as its input_ids"):
        collate.pack_to_blocks(seqs, block_size=8, pad_id=0, labels=[[1, 2], [3]])
    built = collate.build_batches(
        [{"input_ids": s, "labels": l} for s, l in zip(seqs, sft_labels)],
        "packing_position_ids",
        batch_size=1,
        max_length=8,
        pad_id=0,
    )
    assert sorted(v for b in built.batches for v in b["labels"].flatten().tolist() if v != -100) == [2, 3, 7, 8]


def test_length_grouped_batches_reduce_padding():
    lengths = [(i * 37) % 100 + 1 for i in range(256)]
    grouped = collate.length_grouped_batches(lengths, 8, seed=0)
    randomb = collate.random_batches(len(lengths), 8, seed=0)
    assert sorted(i for b in grouped for i in b) == list(range(256))
    assert sorted(i for b in randomb for i in b) == list(range(256))

    def pad(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths) - 1

    assert pad(grouped) < 0.2 < 0.5 < pad(randomb)
    assert collate.length_grouped_batches(lengths, 8, seed=0) == grouped  # seeded


def test_build_batches_accounting(tok, features):
    examples = features * 4
    real = sum(len(f["input_ids"]) for f in examples)
    for strategy in collate.STRATEGIES:
        built = collate.build_batches(examples, strategy, batch_size=4, pad_id=tok.pad_token_id, max_length=32)
        assert 0.0 <= built.padding_fraction < 1.0
        assert built.positions == sum(b["input_ids"].numel() for b in built.batches)
        if strategy != "packing_group_texts":
            assert built.real_tokens == real
    fractions = {
        s: collate.build_batches(examples, s, 4, tok.pad_token_id, 32).padding_fraction for s in collate.STRATEGIES
    }
    assert fractions["pad_to_max_length"] > fractions["dynamic_padding"] >= fractions["length_grouped"]
    assert fractions["packing_group_texts"] == fractions["padding_free_flatten"] == 0.0
    with pytest.raises(ValueError, match="unknown strategy"):
        collate.build_batches(examples, "magic", 4, 0, 32)
    with pytest.raises(ValueError, match="longer than max_length=4"):
        collate.build_batches(examples, "dynamic_padding", 4, 0, 4)


def test_padding_fraction():
    batch = {"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])}
    assert collate.padding_fraction(batch) == 3 / 8
    assert collate.padding_fraction([batch, {"input_ids": torch.zeros(1, 8)}]) == 3 / 16


@pytest.mark.parametrize(
    "batch, kwargs, message",
    [
        ([], {}, "empty batch"),
        ([{"input_ids": [1, 2]}], {"pad_id": None}, "no pad token"),
        ([{"input_ids": []}], {}, "example 0, field 'input_ids': empty"),
        ([{"input_ids": [1, 2]}, {"labels": [1]}], {}, "example 1: missing field 'input_ids'"),
        ([{"input_ids": [1, 2], "labels": [1]}], {}, "example 0, field 'labels': length 1 != len"),
        ([{"input_ids": [1, 2], "attention_mask": [1, 1, 1]}], {}, "field 'attention_mask': length 3"),
        ([{"input_ids": ["a", "b"]}], {}, "example 0, field 'input_ids': not a sequence of integers"),
        ([{"input_ids": [[1, 2]]}], {}, "expected a 1-D sequence"),
        ([{"input_ids": [1, 2, 3]}], {"pad_to_length": 2}, "3 tokens > pad_to_length=2"),
        ([{"input_ids": [1]}], {"padding_side": "middle"}, "padding_side"),
    ],
)
def test_bad_input_raises_clear_errors(batch, kwargs, message):
    kwargs = {"pad_id": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        collate.causal_lm_collate(batch, **kwargs)
