"""Round trips of notebook 11: course_utils.evaluation (save/reload, adapter, merge, model card, evaluation) and
course_utils.export (ONNX, GGUF).

Uses a random tiny Qwen2 with a small BPE trained here (no committed model needed), so it runs anywhere.
The ONNX export (~8 s of CPU) is marked slow.
"""

from __future__ import annotations

import json

import pytest
import torch

from course_utils import env, evaluation, export, tasks

env.setup_offline()


@pytest.fixture(scope="module")
def tokenizer():
    from course_utils.tokenizer import iter_corpus_texts, train_tiny_tokenizer

    texts = [text for _, text in zip(range(400), iter_corpus_texts())]
    return train_tiny_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def model(tokenizer):
    from course_utils.models import build_model

    torch.set_num_threads(2)
    # small vocabulary, 2 layers: fast; randomised biases so a lost bias would show in the logits
    model = build_model("tiny", tokenizer, seed=0, num_hidden_layers=2).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def ids(tokenizer):
    return evaluation.probe_ids(tokenizer, length=16)


def test_save_reload_same_logits(model, tokenizer, ids, tmp_path):
    out = evaluation.save_model(
        model,
        tokenizer,
        tmp_path / "full",
        arguments={"lr": 1e-3},
        extra={"steps": 0},
        card=dict(title="t", base_model="random", data="none", steps="0 steps", metrics={"loss": 1.0}),
    )
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["arguments"] == {"lr": 1e-3} and "torch" in meta["versions"] and "git_commit" in meta
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| loss | 1.0 |" in card and "metadata.json" in card
    reloaded, tok2 = evaluation.reload_model(out)
    assert evaluation.max_abs_diff(evaluation.logits_of(model, ids), evaluation.logits_of(reloaded, ids)) == 0.0
    assert tok2("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]


def _lora(model, seed=1):
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    )
    torch.manual_seed(seed)
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return peft_model.eval()


@pytest.mark.parametrize("method", ["library", "scratch"])
def test_adapter_round_trip(model, ids, tmp_path, method):
    import copy

    peft_model = _lora(model)
    out = evaluation.save_adapter(peft_model, tmp_path / method, method=method)
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    assert evaluation.folder_bytes(out, "*.safetensors") < 20_000  # adapter only, not the base
    reloaded = evaluation.load_adapter(copy.deepcopy(model), out)
    before = evaluation.logits_of(peft_model, ids)
    assert evaluation.max_abs_diff(before, evaluation.logits_of(reloaded, ids)) == 0.0
    assert evaluation.max_abs_diff(before, evaluation.logits_of(model, ids)) > 1e-4  # the adapter changes the output


def test_scratch_and_library_adapter_files_equal(model, tmp_path):
    from safetensors.torch import load_file

    peft_model = _lora(model)
    a = load_file(evaluation.save_adapter(peft_model, tmp_path / "a", "library") / "adapter_model.safetensors")
    b = load_file(evaluation.save_adapter(peft_model, tmp_path / "b", "scratch") / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merged_model(model, tokenizer, ids, tmp_path):
    peft_model = _lora(model)
    merged = evaluation.merge_adapter(peft_model)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert any("lora" in name for name, _ in peft_model.named_parameters())  # the original is untouched
    diff = evaluation.max_abs_diff(evaluation.logits_of(peft_model, ids), evaluation.logits_of(merged, ids))
    assert diff < 1e-4
    reloaded, _ = evaluation.reload_model(evaluation.save_model(merged, tokenizer, tmp_path / "merged"))
    assert evaluation.max_abs_diff(evaluation.logits_of(merged, ids), evaluation.logits_of(reloaded, ids)) == 0.0


def test_gguf_round_trip_f32(model, tokenizer, ids, tmp_path):
    path = export.export_gguf(model, tokenizer, tmp_path / "m.gguf")
    check = export.verify_gguf(model, tokenizer, path, ids)
    assert check.names_match_library and check.tokens_match and check.merges_match
    assert check.max_value_diff == 0.0 and check.max_logit_diff == 0.0
    contents = export.read_gguf(path)
    assert "output.weight" not in contents.tensors  # tied head: llama.cpp reuses token_embd
    assert contents.tensors["blk.0.attn_q.weight"].shape == (128, 128)
    assert contents.tensors["blk.0.attn_k.weight"].shape == (64, 128)  # 2 KV heads x 32
    assert contents.metadata["general.architecture"] == "qwen2"
    assert contents.metadata["tokenizer.ggml.model"] == "gpt2"
    assert contents.metadata["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
    assert contents.metadata["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id == 3
    assert contents.metadata["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 3]  # control tokens
    assert len(contents.metadata["tokenizer.ggml.tokens"]) == len(tokenizer)


def test_gguf_f16_within_tolerance_and_mismatch_detected(model, tokenizer, ids, tmp_path):
    path = export.export_gguf(model, tokenizer, tmp_path / "m16.gguf", dtype="f16")
    with pytest.raises(AssertionError, match="values differ"):
        export.verify_gguf(model, tokenizer, path)
    check = export.verify_gguf(model, tokenizer, path, ids, atol=1e-3)
    assert 0.0 < check.max_value_diff < 1e-3 and check.max_logit_diff < 1e-2
    assert export.read_gguf(path).tensor_types["blk.0.attn_q.weight"] == "F16"
    assert export.read_gguf(path).tensor_types["blk.0.attn_norm.weight"] == "F32"


def test_gguf_names_by_hand_equal_library():
    assert export.gguf_tensor_name("model.layers.3.self_attn.o_proj.weight") == "blk.3.attn_output.weight"
    for name in (
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.0.self_attn.k_proj.bias",
    ):
        assert export.gguf_tensor_name(name) == export.gguf_tensor_name_library(name, 4)
    with pytest.raises(KeyError):
        export.gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq")


@pytest.mark.slow
def test_onnx_matches_pytorch(model, ids, tmp_path):
    path = export.export_onnx(model, tmp_path / "m.onnx", ids)
    got = export.onnx_logits(path, ids)
    assert got.shape == tuple(evaluation.logits_of(model, ids).shape)
    assert evaluation.max_abs_diff(evaluation.logits_of(model, ids), got) < 1e-4
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own InvalidArgument: another length is rejected
        export.onnx_logits(path, ids[:, :8])


def test_evaluate_model_small(model, tokenizer):
    held = evaluation.heldout_blocks(tokenizer, max_blocks=4)
    rows = tasks.load_task_rows(limit=6)
    report = evaluation.evaluate_model(
        model, tokenizer, "random", heldout=held, task_rows=rows, generation_prompts=("1 + 1",), max_new_tokens=4
    )
    assert report.n_blocks == 4 and report.n_tasks == 6
    # a random model is about as uncertain as a uniform guess over the vocabulary
    assert abs(report.loss - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 0.5
    assert 0.0 <= report.accuracy <= 1.0 and set(report.generations) == {"1 + 1"}
    table = evaluation.evaluation_table([report])
    assert list(table.index) == ["random"] and "perplexity" in table.columns


def test_heldout_documents_were_never_trained_on(tokenizer, tmp_path, monkeypatch):
    """The held-out documents share no token with make_tiny_base.py's training blocks and no text with a trained
    document; the blocks the old evaluation used (a split of packed blocks) did share documents with training.
    Computed here (an empty cache), then answered from the cache with the same documents."""
    from course_utils import DATA_DIR
    from course_utils.data import load_corpus, tokenize_and_pack
    from course_utils.tokenizer import load_tiny_tokenizer

    raw = load_corpus(DATA_DIR / "pretrain_corpus.jsonl")
    base_tokenizer = load_tiny_tokenizer()  # what make_tiny_base.py packed with
    packed = tokenize_and_pack(raw, base_tokenizer, block_size=128, document_ids=True)
    assert all(len(doc) == len(ids) for doc, ids in zip(packed["document"], packed["input_ids"]))
    split = packed.train_test_split(test_size=0.02, seed=0)
    trained = {d for block in split["train"]["document"] for d in block}
    in_test_blocks = {d for block in split["test"]["document"] for d in block}
    assert len(in_test_blocks & trained) / len(in_test_blocks) > 0.3  # the block split leaks
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    evaluation.unseen_documents.cache_clear()
    unseen = evaluation.unseen_documents()
    cached = list((tmp_path / "unseen_documents").glob("*.json"))
    assert len(cached) == 1 and tuple(json.loads(cached[0].read_text())) == unseen
    evaluation.unseen_documents.cache_clear()
    monkeypatch.setattr(
        evaluation, "block_split_documents", lambda *a, **k: pytest.fail("the cached answer was not used")
    )
    assert evaluation.unseen_documents() == unseen
    cached[0].write_text("{not json")  # a damaged cache file is recomputed, never trusted
    evaluation.unseen_documents.cache_clear()
    with pytest.raises(pytest.fail.Exception, match="not used"):
        evaluation.unseen_documents()
    monkeypatch.undo()
    evaluation.unseen_documents.cache_clear()
    texts = raw["text"]
    trained_texts = {texts[d] for d in trained}
    assert len(unseen) > 100 and not set(unseen) & trained and not {texts[d] for d in unseen} & trained_texts
    held = evaluation.heldout_blocks(tokenizer)  # the same documents, packed with any tokenizer
    again = tokenize_and_pack(raw.select(unseen), tokenizer, block_size=128)
    assert len(held) > 20 and list(held["input_ids"]) == list(again["input_ids"])


def test_llama_qk_permute_round_trips_and_interleaves_halves():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2 * 8, 3)  # 2 heads of dim 8, in 3
    p = export.llama_qk_permute(w, n_head=2)
    assert torch.equal(export.llama_qk_permute(p, n_head=2, inverse=True), w)
    # within a head, rows (0, 4), (1, 5), ... (the rotate_half pairs) become neighbours (0, 1), (2, 3), ...
    assert torch.equal(p[:8:2], w[:4]) and torch.equal(p[1:8:2], w[4:8])
