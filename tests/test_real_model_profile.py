"""The real-model path of every notebook, on CPU, without a network.

Three stand-ins are written by ``course_utils.models.build_standin`` (small random models with Qwen2.5's real
tokenizer and templates, weights saved in bf16 as the hub checkpoints are):

* ``qwen2-instruct``: Qwen2ForCausalLM, Qwen2.5-Instruct's own template (no generation markers, default system
  prompt), EOS ``<|im_end|>``, pad ``<|endoftext|>``, the Instruct generation config;
* ``qwen2-base``: like Qwen2.5-0.5B base, EOS = pad = ``<|endoftext|>``;
* ``llama``: LlamaForCausalLM (no biases, untied head) whose own template already has generation markers.

Each notebook that loads a causal LM is executed with ``MODEL=<stand-in>`` and the ``standin`` parameters of
``configs/notebook_profiles.json`` (small step counts) by the project's runner; it must finish with every assertion.
Every such notebook runs on ``qwen2-instruct``; the other two stand-ins run where the notebook touches what makes them
different (``standin_kinds`` in ``configs/notebook_profiles.json``), which keeps ``make test`` inside CI's 90 minutes (a notebook on a stand-in takes about
90 s on 2 cores). ``WORKBOOK_STANDINS=all`` runs every notebook on every stand-in.
Marked ``realmodel`` and ``slow``; ``make test`` runs them (``make unit-fast`` skips them).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import PROJECT_ROOT, env, memory, models
from course_utils.tokenizer import (
    CHAT_TEMPLATE,
    has_generation_markers,
    template_matches_inference,
    use_training_template,
)

env.setup_offline()

import torch  # noqa: E402

NOTEBOOKS = sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MODEL_NOTEBOOKS = [n for n in NOTEBOOKS if memory.notebook_profiles()[n]["uses_model"]]

#: (notebook, stand-in) pairs: each notebook's ``standin_kinds`` in configs/notebook_profiles.json (reasons in its
#: ``_doc``), every stand-in for a notebook that names none or with ``WORKBOOK_STANDINS=all``.
STANDIN_RUNS = [
    (notebook, kind)
    for notebook in MODEL_NOTEBOOKS
    for kind in models.STANDIN_KINDS
    if os.environ.get("WORKBOOK_STANDINS") == "all"
    or kind in memory.notebook_profiles()[notebook].get("standin_kinds", models.STANDIN_KINDS)
]


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {kind: models.build_standin(root / kind, kind) for kind in models.STANDIN_KINDS}


# ---------------------------------------------------------------------------------------------- the stand-ins
def test_standins_look_like_hub_checkpoints(standins):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    for kind, path in standins.items():
        with safe_open(str(path / "model.safetensors"), "pt") as handle:
            dtypes = {handle.get_tensor(name).dtype for name in handle.keys()}
        assert dtypes == {torch.bfloat16}, kind  # stored like the hub's bf16 checkpoints
        raw = AutoTokenizer.from_pretrained(str(path))
        assert len(raw) == 151_665 and raw.convert_tokens_to_ids("<|im_start|>") == 151_644
        assert raw("Hello!")["input_ids"] == [9707, 0]  # Qwen2's real ids
        config = AutoConfig.from_pretrained(str(path))
        assert config.model_type == ("llama" if kind == "llama" else "qwen2")
        assert has_generation_markers(raw.chat_template) == (kind == "llama")
        if kind == "qwen2-base":
            assert raw.eos_token == raw.pad_token == "<|endoftext|>"
        else:
            assert (raw.eos_token, raw.pad_token) == ("<|im_end|>", "<|endoftext|>")
        rendered = raw.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert "You are Qwen, created by Alibaba Cloud" in rendered  # Qwen2.5's default system prompt


def test_loading_gives_fp32_weights_and_one_training_template(standins):
    for kind, path in standins.items():
        model, tokenizer = models.load_model_and_tokenizer(str(path))
        assert {p.dtype for p in model.parameters()} == {torch.float32}, kind  # fp32 master weights
        assert tokenizer.eos_token == "<|im_end|>" != tokenizer.pad_token, kind
        assert has_generation_markers(tokenizer.chat_template), kind
        if kind == "llama":  # its own template has markers: kept
            assert tokenizer.chat_template != CHAT_TEMPLATE
        else:  # Qwen2.5's template has none: the project's ChatML replaces it, the original is kept aside
            assert tokenizer.chat_template == CHAT_TEMPLATE
            assert "You are Qwen" in tokenizer.init_kwargs["model_chat_template"]
        eos = model.generation_config.eos_token_id
        assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
        kept, _ = models.load_model_and_tokenizer(str(path), dtype="auto", template="model")
        assert next(kept.parameters()).dtype == torch.bfloat16


def test_pad_equal_to_eos_is_handled(standins):
    """Qwen2.5 base ships pad == eos: allowed for a causal LM (labels are masked by position, so the EOS is trained),
    refused for a reward head (it would pool the token before the final EOS); the training template separates them."""
    from course_utils import collate

    path = str(standins["qwen2-base"])
    tokenizer = models.load_tokenizer(path, template="model")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    ids = tokenizer("Hello")["input_ids"] + [tokenizer.eos_token_id]
    batch = collate.causal_lm_collate([{"input_ids": ids}, {"input_ids": ids[:1]}], pad_id=tokenizer.pad_token_id)
    assert batch["labels"][0, -1] == tokenizer.eos_token_id and (batch["labels"][1, 1:] == -100).all()
    with pytest.raises(ValueError, match="pad == eos"):
        models.load_model_and_tokenizer(path, head="reward", template="model")
    model, tokenizer = models.load_model_and_tokenizer(path, head="reward")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_template_without_markers_is_a_clear_error(standins):
    from course_utils import sft

    tokenizer = models.load_tokenizer(str(standins["qwen2-instruct"]), template="model")
    messages = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}]
    with pytest.raises(ValueError, match="generation"):
        sft.encode_chat_with_template(messages, tokenizer)
    with pytest.raises(ValueError, match="0 trained tokens"):
        sft.encode_rows([messages], tokenizer, method="template")
    use_training_template(tokenizer)
    item = sft.encode_chat_with_template(messages, tokenizer)
    assert item["labels"].count(-100) < len(item["labels"])
    assert template_matches_inference(tokenizer, messages, item["input_ids"])


def test_greedy_evaluation_ignores_the_checkpoint_sampling_config(standins):
    from course_utils import sft

    model, tokenizer = models.load_model_and_tokenizer(str(standins["qwen2-instruct"]))
    assert model.generation_config.repetition_penalty != 1.0 and model.generation_config.do_sample
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}]]
    first = sft.generate_answers(model, tokenizer, prompts, max_new_tokens=6)
    torch.manual_seed(123)
    assert sft.generate_answers(model, tokenizer, prompts, max_new_tokens=6) == first
    with torch.no_grad():  # the plain greedy continuation, computed by hand
        ids = torch.tensor([sft.prompt_ids(prompts[0], tokenizer)])
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    by_hand = ids[0, len(sft.prompt_ids(prompts[0], tokenizer)) :].tolist()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    by_hand = by_hand[: by_hand.index(im_end)] if im_end in by_hand else by_hand
    assert first == [tokenizer.decode(by_hand, skip_special_tokens=True).strip()]
    assert model.generation_config.repetition_penalty != 1.0  # restored afterwards


def test_memory_check_refuses_with_one_sentence(standins, monkeypatch):
    import psutil

    config = models.load_config(str(standins["qwen2-instruct"]))
    need = memory.notebook_need("06_sft_masking", config, device_type="cpu")
    assert need > 4 * models.count_parameters_formula(config)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": need // 2})())
    with pytest.raises(MemoryError) as error:
        memory.check_fits("06_sft_masking", config, "cpu")
    message = str(error.value)
    assert message.count(".") <= 3 and "GiB" in message and "MODEL" in message
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": need * 2})())
    assert memory.check_fits("06_sft_masking", config, "cpu") == need


def test_title_cells_state_the_predicted_gpu_memory():
    """Each title cell states the GPU memory predicted for Qwen2.5-0.5B from configs/notebook_profiles.json."""
    config = memory.architecture("Qwen2.5-0.5B")
    for name in NOTEBOOKS:
        nb = json.loads((PROJECT_ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
        title = "".join(nb["cells"][0]["source"])
        need = memory.notebook_need(name, config)
        if need == 0:
            assert "不加载模型" in title, name
        else:
            assert f"约 {need / 2**30:.1f} GiB" in title, (name, round(need / 2**30, 1))


# ----------------------------------------------------------------------------------- every notebook, stand-ins
def run_notebook(notebook: str, model: Path, out: Path) -> dict:
    environment = env.child_environment(WORKBOOK_FIGURES_DIR=str(out / "figures"))
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "run_notebooks.py"),
        "--out",
        str(out),
        "--profile",
        "standin",
        "--model",
        str(model),
        str(PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=environment, cwd=PROJECT_ROOT, timeout=900)
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8")) if (out / "summary.json").exists() else []
    if done.returncode != 0 or not rows or rows[0]["status"] != "ok":
        pytest.fail(f"{notebook} on {model.name}: {rows[0]['error'] if rows else done.stderr[-2000:]}")
    return rows[0]


def test_standin_matrix_covers_every_model_notebook():
    """A new model notebook runs on all three stand-ins until someone states which it needs."""
    for notebook, profile in memory.notebook_profiles().items():
        assert set(profile.get("standin_kinds", [])) <= set(models.STANDIN_KINDS), notebook
        assert profile["uses_model"] or "standin_kinds" not in profile, notebook
    assert {notebook for notebook, kind in STANDIN_RUNS if kind == "qwen2-instruct"} == set(MODEL_NOTEBOOKS)
    assert {kind for _, kind in STANDIN_RUNS} == set(models.STANDIN_KINDS)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize(("notebook", "kind"), STANDIN_RUNS)
def test_notebook_runs_on_standin(notebook, kind, standins, tmp_path):
    row = run_notebook(notebook, standins[kind], tmp_path)
    assert math.isfinite(row["seconds"])
