"""Models: the tiny preset built from a config, the committed tiny base, and hub models.

``MODEL = "tiny"``       a randomly initialised Qwen2-architecture model (~1.5M parameters) from a config;
``MODEL = "tiny-base"``  the same architecture pretrained on the project's corpus, committed in
                         ``data_samples/tiny_base`` (rebuilt by ``python scripts/make_tiny_base.py``);
anything else            a Hugging Face Hub name or a local folder (e.g. ``Qwen/Qwen2.5-0.5B``), loaded with
                         ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=False)``; needs a network
                         or a local copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from course_utils import DATA_DIR

TINY_BASE_DIR: Path = DATA_DIR / "tiny_base"

#: Qwen2 architecture, scaled down so that a 2-core CPU trains it at ~9k tokens/s.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.02,
    ),
}

LOCAL_NAMES = ("tiny", "tiny-base")


def tiny_config(tokenizer: "PreTrainedTokenizerBase | None" = None, **overrides: Any) -> "Qwen2Config":
    """A ``Qwen2Config`` for the tiny preset; vocabulary and special ids come from ``tokenizer``."""
    from transformers import Qwen2Config

    from course_utils.tokenizer import ENDOFTEXT, load_tiny_tokenizer

    tokenizer = tokenizer or load_tiny_tokenizer()
    kwargs = dict(PRESETS["tiny"])
    rope_theta = kwargs.pop("rope_theta")
    kwargs.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def count_parameters_formula(config: "PretrainedConfig") -> int:
    """Parameters of a Qwen2/Llama decoder by formula (biases on q/k/v as in Qwen2, none in Llama).

    Per layer: attention ``h*h (q) + 2*h*kv (k, v) + h*h (o)`` with ``kv = n_kv_heads * head_dim``, plus
    the SwiGLU MLP ``3*h*i`` and two RMSNorm weight vectors ``2*h``. Then the embedding ``V*h``, the final
    norm ``h``, and an LM head ``V*h`` unless it is tied to the embedding.
    """
    h = config.hidden_size
    i = config.intermediate_size
    v = config.vocab_size
    n_layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    q_out = config.num_attention_heads * head_dim
    attention = h * q_out + 2 * h * kv + q_out * h
    if config.model_type == "qwen2":
        attention += q_out + 2 * kv  # q, k, v biases
    elif getattr(config, "attention_bias", False):
        attention += q_out + 2 * kv + h
    per_layer = attention + 3 * h * i + 2 * h
    total = v * h + n_layers * per_layer + h
    if not config.tie_word_embeddings:
        total += v * h
    return total


def build_model(
    preset: str = "tiny", tokenizer: "PreTrainedTokenizerBase | None" = None, seed: int = 0, **overrides: Any
) -> "PreTrainedModel":
    """A randomly initialised causal LM from a preset config (seeded, so the same seed gives the same weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = tiny_config(tokenizer, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def load_model_and_tokenizer(
    name: str = "tiny-base",
    dtype: "torch.dtype | str | None" = None,
    device: "torch.device | str | None" = None,
    seed: int = 0,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer by name: ``tiny``, ``tiny-base`` or a hub name / local folder.

    Hub models are loaded with ``trust_remote_code=False``: ``True`` would execute Python shipped with
    the checkpoint on your machine, so only enable it for code you have read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course_utils.tokenizer import load_tiny_tokenizer

    if name == "tiny":
        tokenizer = load_tiny_tokenizer()
        model = build_model("tiny", tokenizer, seed=seed)
    elif name == "tiny-base":
        tokenizer = load_tiny_tokenizer(TINY_BASE_DIR)
        if not (TINY_BASE_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"{TINY_BASE_DIR}/model.safetensors missing: run `python scripts/make_tiny_base.py`"
            )
        model = AutoModelForCausalLM.from_pretrained(str(TINY_BASE_DIR), trust_remote_code=False)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype if dtype is not None else "auto", trust_remote_code=False
        )
        if tokenizer.pad_token is None:
            raise ValueError(
                f"{name}: tokenizer has no pad token; set a dedicated one, not eos (see notebook 02)"
            )
    if dtype is not None and name in LOCAL_NAMES:
        model = model.to(dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def is_local_model(name: str) -> bool:
    """True for the embedded models that need no network."""
    return name in LOCAL_NAMES
