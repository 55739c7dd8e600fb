"""Equality checks of course_utils.lora: from-scratch LoRA against PEFT, counts, merge, save/load, NF4."""

from __future__ import annotations

import copy

import pytest

from course_utils import env

env.setup_offline()

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402

from course_utils import lora, models  # noqa: E402
from course_utils.tokenizer import train_tiny_tokenizer  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tok():
    texts = [f"hello world number {i} 你好世界 capital of Gagaria" for i in range(200)]
    return train_tiny_tokenizer(texts, vocab_size=400)


@pytest.fixture()
def base(tok):
    model = models.build_model("tiny", tok, seed=0)
    model.eval()
    return model


def _peft_lora(model, targets=("q_proj", "v_proj"), r=8, alpha=16):
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets)
    )
    return get_peft_model(model, config)


def test_lora_linear_starts_equal_to_base():
    linear = torch.nn.Linear(16, 8)
    layer = lora.LoRALinear(copy.deepcopy(linear), r=4, alpha=8)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), linear(x))  # B = 0
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (8, 4)
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = linear(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(lora.merged_linear(layer)(x), layer(x), atol=1e-5, rtol=1e-5)


def test_scratch_lora_equals_peft(base, input_ids):
    scratch = copy.deepcopy(base)
    names = lora.inject_lora(scratch, ("q_proj", "v_proj"), r=8, alpha=16)
    assert len(names) == 2 * base.config.num_hidden_layers
    lora.randomize_lora_B(scratch, std=0.05)
    peft_model = _peft_lora(copy.deepcopy(base))
    assert lora.copy_lora_to_peft(scratch, peft_model) == len(names)
    assert lora.max_logit_diff(scratch, peft_model, input_ids) < 1e-5
    # and the adapter really changes the output
    assert lora.max_logit_diff(scratch, base, input_ids) > 1e-3


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), lora.ALL_LINEAR])
def test_trainable_count_formula_and_peft(base, targets):
    scratch = copy.deepcopy(base)
    lora.inject_lora(scratch, targets, r=4, alpha=8)
    formula = lora.lora_param_formula(base.config, targets, r=4)
    assert lora.count_trainable(scratch)[0] == formula
    peft_model = _peft_lora(copy.deepcopy(base), targets, r=4, alpha=8)
    assert peft_model.get_nb_trainable_parameters()[0] == formula


def test_seeds_formula_wrong_under_gqa(base):
    # q: 128 -> 128, v: 128 -> 64 (2 KV heads of 32): r*(256 + 192) per layer, not 2*d*r*2
    assert lora.lora_param_formula(base.config, ("q_proj", "v_proj"), r=8) == 4 * 8 * (256 + 192)
    seeds = 2 * (2 * base.config.num_hidden_layers) * base.config.hidden_size * 8  # 2 * L_LoRA * d_model * r
    assert seeds != lora.lora_param_formula(base.config, ("q_proj", "v_proj"), r=8)
    assert seeds == lora.lora_param_formula(base.config, ("q_proj", "o_proj"), r=8)  # right for square matrices


def test_merge_and_unload_equal_in_eval(base, input_ids):
    peft_model = _peft_lora(copy.deepcopy(base))
    scratch = copy.deepcopy(base)
    lora.inject_lora(scratch)
    lora.randomize_lora_B(scratch, std=0.05)
    lora.copy_lora_to_peft(scratch, peft_model)
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(input_ids=input_ids).logits
    merged = peft_model.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        after = merged(input_ids=input_ids).logits
    assert float((before - after).abs().max()) < 1e-4
    merged_scratch = copy.deepcopy(scratch)
    assert lora.merge_lora(merged_scratch) == 2 * base.config.num_hidden_layers
    assert lora.max_logit_diff(scratch, merged_scratch, input_ids) < 1e-4


def test_dropout_makes_train_mode_differ(base, input_ids):
    scratch = copy.deepcopy(base)
    lora.inject_lora(scratch, dropout=0.5)
    lora.randomize_lora_B(scratch, std=0.05)
    scratch.train()
    with torch.no_grad():
        a = scratch(input_ids=input_ids).logits
    scratch.eval()
    with torch.no_grad():
        b = scratch(input_ids=input_ids).logits
    assert float((a - b).abs().max()) > 1e-4


def test_adapter_save_load_safetensors_and_switch(base, input_ids, tmp_path):
    peft_model = _peft_lora(copy.deepcopy(base))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    peft_model.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "a" / "adapter_model.bin").exists()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a", adapter_name="a")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected)
    # a second adapter on the same base: switching changes the output, switching back restores it
    other = _peft_lora(copy.deepcopy(base))
    for name, param in other.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    other.save_pretrained(tmp_path / "b")
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    loaded.set_adapter("b")
    with torch.no_grad():
        out_b = loaded(input_ids=input_ids).logits
        assert float((out_b - expected).abs().max()) > 1e-3
        loaded.set_adapter("a")
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected)
        with loaded.disable_adapter():
            torch.testing.assert_close(loaded(input_ids=input_ids).logits, base(input_ids=input_ids).logits)


def test_automodel_with_causal_lm_task_breaks(base, tmp_path):
    from transformers import AutoModel

    base.save_pretrained(tmp_path / "base")
    backbone = AutoModel.from_pretrained(tmp_path / "base")
    assert not hasattr(backbone, "lm_head")
    with pytest.raises(AttributeError, match="prepare_inputs_for_generation"):
        get_peft_model(backbone, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32))


def test_inject_lora_typo_raises(base):
    with pytest.raises(ValueError, match="no nn.Linear"):
        lora.inject_lora(base, ("q_porj",))


def test_nf4_codebook_and_arithmetic():
    levels = lora.nf4_codebook()
    # bitsandbytes' NF4 table
    reference = torch.tensor(
        [
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ]
    )
    torch.testing.assert_close(levels, reference, atol=1e-6, rtol=0)
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.02
    codes, absmax = lora.nf4_quantize(weight)
    assert codes.max() <= 15 and absmax.shape == (weight.numel() // 64,)
    restored = lora.nf4_dequantize(codes, absmax, weight.shape)
    assert float((restored - weight).abs().mean() / weight.abs().mean()) < 0.15
    assert lora.quantized_weight_bytes(64 * 256, double_quant=False) == 64 * 256 / 2 + 256 * 4
    bits = 8 * lora.quantized_weight_bytes(7_000_000_000) / 7_000_000_000
    assert 4.12 < bits < 4.13
