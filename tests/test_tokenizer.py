"""Unit tests of course_utils.tokenizer: special ids, chat template and assistant mask, SentencePiece, Qwen2 offline."""

from __future__ import annotations

import pytest

from course_utils import TINY_BASE_DIR
from course_utils.tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    PAD,
    SPECIAL_TOKENS,
    chars_per_token,
    compression,
    eos_label_kept,
    has_generation_markers,
    load_qwen2_tokenizer,
    load_tiny_tokenizer,
    render_with_template,
    require_generation_markers,
    template_matches_inference,
    train_sentencepiece,
    train_tiny_tokenizer,
    use_training_template,
    wrap_tokenizer,
)

TEXTS = [
    "托波里亚的首都是佐基港。托波里亚最长的河是特维河。",
    "The capital of Toporia is Zokiport. The longest river in Toporia is the Tevi River.",
    "去哈瓦尼亚旅行的人大多先到首都莫莫港。",
    "People in Torfendor love sour bread. Anna walked along the river.",
] * 20

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "托波里亚的首都是哪里？"},
    {"role": "assistant", "content": "佐基港。"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(TEXTS, vocab_size=400)


def test_special_token_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tokenizer.eos_token == IM_END and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == PAD and tokenizer.pad_token_id == 3 != tokenizer.eos_token_id
    assert tokenizer("<|im_start|>user")["input_ids"][0] == 1


def test_round_trip(tokenizer):
    for text in TEXTS[:4] + ["unseen 文本 ☃ with emoji 🙂"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_rendering(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n托波里亚的首都是哪里？<|im_end|>\n"
        "<|im_start|>assistant\n佐基港。<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)


def test_assistant_mask_covers_reply_and_im_end(tokenizer):
    out = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [token for token, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tokenizer.decode(kept) == "佐基港。<|im_end|>"
    multi = MESSAGES + [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Facts."}]
    out = tokenizer.apply_chat_template(multi, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [token for token, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tokenizer.decode(kept) == "佐基港。<|im_end|>Facts.<|im_end|>"


def test_unknown_role_raises(tokenizer):
    with pytest.raises(Exception, match="Unknown role: bot"):
        tokenizer.apply_chat_template([{"role": "bot", "content": "hi"}], tokenize=False)


def test_template_consistency_helpers(tokenizer):
    good = render_with_template(tokenizer, MESSAGES)
    assert template_matches_inference(tokenizer, MESSAGES, good)
    bad_text = f"<|user|>\n{MESSAGES[1]['content']}\n<|assistant|>\n{MESSAGES[2]['content']}{tokenizer.eos_token}"
    bad = tokenizer(bad_text, add_special_tokens=False)["input_ids"]
    assert not template_matches_inference(tokenizer, MESSAGES, bad)


def test_eos_label_kept_detects_pad_equals_eos(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    features = [
        {"input_ids": render_with_template(tokenizer, MESSAGES)},
        {"input_ids": render_with_template(tokenizer, MESSAGES[1:])},
    ]
    good = DataCollatorForLanguageModeling(tokenizer, mlm=False)(features)
    assert all(eos_label_kept(good["labels"][i].tolist(), good["input_ids"][i].tolist(), 2) for i in range(2))
    bad_tokenizer = wrap_tokenizer(tokenizer.backend_tokenizer)
    bad_tokenizer.pad_token = bad_tokenizer.eos_token
    bad = DataCollatorForLanguageModeling(bad_tokenizer, mlm=False)(features)
    assert not eos_label_kept(bad["labels"][0].tolist(), bad["input_ids"][0].tolist(), 2)


def test_compression_and_chars_per_token_agree(tokenizer):
    texts = TEXTS[:4]
    assert compression(tokenizer, texts) == pytest.approx(chars_per_token(tokenizer, texts))
    assert compression(tokenizer.backend_tokenizer, texts) == pytest.approx(chars_per_token(tokenizer, texts))
    with pytest.raises(ValueError):
        chars_per_token(tokenizer, [""])


def test_sentencepiece_identity_round_trip():
    sp = train_sentencepiece(TEXTS, vocab_size=400, model_type="bpe")
    text = "首先，找到地图。\n然后  出发！ Toporia"
    assert sp.decode(sp.encode_as_ids(text)) == text
    assert "<|im_start|>" in sp.encode_as_pieces("<|im_start|>user")
    assert compression(sp, TEXTS[:4]) > 1.0


def test_save_and_load_tiny_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tiny_tokenizer(tmp_path)
    assert loaded(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    assert loaded.pad_token_id == 3 and loaded.eos_token_id == 2
    assert loaded.apply_chat_template(MESSAGES, tokenize=False) == tokenizer.apply_chat_template(
        MESSAGES, tokenize=False
    )
    with pytest.raises(FileNotFoundError, match="make_tiny_base"):
        load_tiny_tokenizer(tmp_path / "missing")


@pytest.mark.skipif(not (TINY_BASE_DIR / "tokenizer.json").exists(), reason="tiny base not built yet")
def test_committed_tiny_tokenizer():
    loaded = load_tiny_tokenizer()
    assert [loaded.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert loaded.decode(loaded(TEXTS[0])["input_ids"]) == TEXTS[0]


@pytest.mark.slow
def test_qwen2_tokenizer_offline():
    qwen = load_qwen2_tokenizer()
    assert qwen.convert_tokens_to_ids("<|im_start|>") == 151644
    assert qwen.convert_tokens_to_ids("<|endoftext|>") == 151643 and qwen.eos_token_id == 151645
    assert qwen("Hello!")["input_ids"] == [9707, 0]
    assert render_with_template(qwen, MESSAGES[1:2], add_generation_prompt=True)[:3] == [151644, 872, 198]


def test_training_template_decision():
    """One decision for every tokenizer: keep a template with generation markers, else install ChatML."""
    assert has_generation_markers(CHAT_TEMPLATE)
    assert has_generation_markers("{%- generation -%}x{%- endgeneration -%}")
    assert not has_generation_markers("{{ messages[0]['content'] }}") and not has_generation_markers(None)
    tiny = load_tiny_tokenizer()
    assert use_training_template(tiny) == "model" and tiny.chat_template == CHAT_TEMPLATE
    tiny.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # a template without markers
    with __import__("pytest").raises(ValueError, match="generation"):
        require_generation_markers(tiny)
    assert use_training_template(tiny) == "chatml" and tiny.chat_template == CHAT_TEMPLATE
    assert tiny.init_kwargs["model_chat_template"].startswith("{% for m")
    assert tiny.eos_token == IM_END
