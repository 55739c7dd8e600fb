"""Models: the one place that resolves, loads and checks every model and tokenizer of the workbook.

``MODEL = "tiny"``                 a randomly initialised Qwen2-architecture model (~1.5M parameters) from a config;
``MODEL = "tiny-base"``            the same architecture pretrained on the project's corpus, committed in
                                   ``data_samples/tiny_base`` (rebuilt by ``python scripts/make_tiny_base.py``);
``"tiny-sft"``, ``"tiny-sft-all-tokens"``  the committed SFT models (``python scripts/sft.py configs/...``);
anything else                      a Hugging Face Hub name or a local folder (e.g. ``Qwen/Qwen2.5-0.5B``), loaded with
                                   ``from_pretrained(..., trust_remote_code=False)``; needs a network or a local copy.

Every notebook and script loads through :func:`load_model_and_tokenizer` / :func:`load_tokenizer`, so all of them
get the same dtype rule (fp32 weights: mixed precision keeps fp32 master weights), the same training chat template
(:func:`course_utils.tokenizer.use_training_template`) and the same pad-token check. :func:`build_standin` writes the
small random Qwen2/Llama checkpoints (real Qwen2.5 tokenizer and templates, bf16 weights) that test the real-model
path of every notebook on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils import DATA_DIR, TINY_BASE_DIR, env, tasks

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config


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

#: The embedded models: name -> committed folder (``None``: built from the tiny preset config).
LOCAL_MODELS: dict[str, Path | None] = {
    "tiny": None,
    "tiny-base": TINY_BASE_DIR,
    "tiny-sft": DATA_DIR / "tiny_sft",
    "tiny-sft-all-tokens": DATA_DIR / "tiny_sft_all_tokens",
}
LOCAL_NAMES = tuple(LOCAL_MODELS)
TINY_SFT_NAME = "tiny-sft"
#: How each committed model is rebuilt.
REBUILD_COMMANDS: dict[str, str] = {
    "tiny-base": "python scripts/make_tiny_base.py",
    "tiny-sft": "python scripts/sft.py configs/sft_tiny.yaml",
    "tiny-sft-all-tokens": "python scripts/sft.py configs/sft_tiny_all_tokens.yaml",
}


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


def resolve_model_path(name: str) -> str:
    """An embedded name -> its committed folder (checked to exist); a hub name or a folder unchanged."""
    if name in LOCAL_MODELS and LOCAL_MODELS[name] is not None:
        path = LOCAL_MODELS[name]
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path}/model.safetensors missing: run `{REBUILD_COMMANDS[name]}`")
        return str(path)
    return str(name)


def load_tokenizer(name: str = "tiny-base", template: str = "training") -> "PreTrainedTokenizerBase":
    """The tokenizer of a model name or folder, with ``trust_remote_code=False``.

    ``template="training"`` installs the training chat template (:func:`tokenizer.use_training_template`: the model's
    own when it has ``{% generation %}`` markers, else the project's ChatML with ``<|im_end|>`` as EOS), so
    training and inference render the same prompt; ``template="model"`` keeps the checkpoint's own template.
    Refuses a tokenizer without a pad token: ``pad = eos`` is the pitfall of notebook 02.
    """
    from transformers import AutoTokenizer

    from course_utils.tokenizer import load_tiny_tokenizer, use_training_template

    if template not in ("training", "model"):
        raise ValueError(f"template must be 'training' or 'model', not {template!r}")
    if name == "tiny":
        tokenizer = load_tiny_tokenizer()
    elif name in LOCAL_MODELS:
        tokenizer = load_tiny_tokenizer(Path(resolve_model_path(name)))
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    if tokenizer.pad_token is None:
        raise ValueError(f"{name}: tokenizer has no pad token; set a dedicated one, not eos (see notebook 02)")
    if template == "training":
        use_training_template(tokenizer)
    return tokenizer


def load_model_and_tokenizer(
    name: str = "tiny-base",
    dtype: "torch.dtype | str | None" = "float32",
    device: "torch.device | str | None" = None,
    seed: int = 0,
    template: str = "training",
    head: str = "causal-lm",
    **model_kwargs: Any,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a model and its tokenizer by name: an embedded name, a hub name or a local folder.

    ``dtype`` defaults to fp32 whatever the checkpoint stores (Qwen2.5 ships bf16): the workbook trains in mixed
    precision with fp32 master weights (``autocast`` runs the matmuls in bf16/fp16) and compares against fp32
    references; pass ``"auto"`` to keep the stored dtype (inference only). ``head="reward"`` loads
    ``AutoModelForSequenceClassification(num_labels=1)`` on the same backbone (a new, ``seed``-initialised score
    head) with ``config.pad_token_id`` set, as TRL's ``RewardTrainer`` needs; it refuses pad == eos (Qwen2.5 base
    under ``template="model"``), which would pool the token before the final EOS. Hub models are loaded with
    ``trust_remote_code=False``: ``True`` would execute Python shipped with the checkpoint on your machine, so
    only enable it for code you have read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in ("causal-lm", "reward"):
        raise ValueError(f"head must be 'causal-lm' or 'reward', not {head!r}")
    tokenizer = load_tokenizer(name, template=template)
    if head == "reward" and tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad == eos is fine for a causal LM here (every collator masks padding by position, never by id), but a
        # sequence-classification head pools the rightmost non-pad token: a reply ending in EOS would be scored
        # on the token before it, silently.
        raise ValueError(
            f"{name}: pad == eos ({tokenizer.pad_token!r}); a reward model reads its score at the rightmost non-pad "
            "token, so it would skip the final EOS. Load with template='training' (EOS becomes <|im_end|>) or give "
            "the tokenizer a dedicated pad token."
        )
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if name == "tiny":
        if head != "causal-lm":
            raise ValueError("the random 'tiny' preset has no reward head; use 'tiny-base' or a checkpoint")
        model = build_model("tiny", tokenizer, seed=seed)
        if torch_dtype not in (None, "auto"):
            model = model.to(dtype=torch_dtype)
    else:
        path = resolve_model_path(name)
        kwargs = dict(dtype=torch_dtype if torch_dtype is not None else "auto", trust_remote_code=False, **model_kwargs)
        if head == "reward":
            torch.manual_seed(seed)
            with env.quiet_transformers():  # "score.weight newly initialized" is expected
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
            model.config.pad_token_id = tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if head == "causal-lm":
        sync_generation_config(model, tokenizer)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def sync_generation_config(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """Make the model stop where the training template ends a turn: EOS ids = the tokenizer's EOS (``<|im_end|>``
    under ChatML) plus the checkpoint's own, and the pad id the tokenizer's."""
    config = model.generation_config
    own = config.eos_token_id
    own = [] if own is None else ([own] if isinstance(own, int) else list(own))
    eos = [tokenizer.eos_token_id] + [i for i in own if i != tokenizer.eos_token_id]
    config.eos_token_id = eos if len(eos) > 1 else eos[0]
    config.pad_token_id = tokenizer.pad_token_id


def load_config(name: str) -> "PretrainedConfig":
    """The config of a model name or folder (only ``config.json``; no weights)."""
    from transformers import AutoConfig

    if name == "tiny":
        return tiny_config()
    return AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=False)


def is_local_model(name: str) -> bool:
    """True for the embedded models (committed or built from a preset): no network, no GPU needed."""
    return name in LOCAL_MODELS


# --------------------------------------------------------------------------------------------------------------
# Stand-ins for real checkpoints (the CPU test of every notebook's real-model path)
# --------------------------------------------------------------------------------------------------------------
STANDIN_KINDS: tuple[str, ...] = ("qwen2-instruct", "qwen2-base", "llama")
#: Qwen2.5's special tokens after ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (ids 151646-151664).
QWEN25_EXTRA_SPECIAL_TOKENS: list[str] = [
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
#: Qwen2.5-0.5B's embedding rows: 151,936, more than its 151,665 tokens (padded for efficient matmuls).
QWEN25_VOCAB_SIZE = 151_936


def trl_chat_template(name: str) -> str:
    """A chat template shipped with TRL (``trl/chat_templates/<name>.jinja``, e.g. ``qwen2_5`` = Qwen2.5's own,
    ``qwen2_5_training`` = the same with ``{% generation %}`` markers); offline, no Hub."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (trl==1.16.0 ships it)")
    return path.read_text(encoding="utf-8")


def build_standin(
    path: "str | Path", kind: str = "qwen2-instruct", hidden_size: int = 64, num_layers: int = 2, seed: int = 0
) -> Path:
    """Write a small randomly initialised checkpoint shaped like a real hub model, for testing without a network.

    Every kind has Qwen2.5's real tokenizer (151,665 tokens: :func:`course_utils.tokenizer.load_qwen2_tokenizer`, built
    offline, plus Qwen2.5's other special tokens) and its 151,936 embedding rows, weights saved in bf16 as the hub
    checkpoints are, and
    ``config.json`` / ``tokenizer_config.json`` / ``generation_config.json`` as ``from_pretrained`` expects:

    * ``"qwen2-instruct"``: ``Qwen2ForCausalLM`` (tied embeddings), Qwen2.5-Instruct's own chat template (default
      system prompt, no ``{% generation %}`` markers), EOS ``<|im_end|>``, pad ``<|endoftext|>``, and the
      Instruct generation config (``repetition_penalty=1.1``, sampling on);
    * ``"qwen2-base"``: like Qwen2.5-0.5B base: EOS = pad = ``<|endoftext|>``;
    * ``"llama"``: ``LlamaForCausalLM`` (no attention biases, untied LM head) with a template that already has
      generation markers (TRL's ``qwen2_5_training``), so the "keep the model's own template" branch runs.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    from course_utils.tokenizer import ENDOFTEXT, IM_END, load_qwen2_tokenizer

    if kind not in STANDIN_KINDS:
        raise ValueError(f"unknown stand-in kind {kind!r}; known: {STANDIN_KINDS}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = load_qwen2_tokenizer()
    tokenizer.add_tokens(QWEN25_EXTRA_SPECIAL_TOKENS, special_tokens=True)  # ids 151646-151664, as Qwen2.5 has them
    tokenizer.chat_template = trl_chat_template("qwen2_5_training" if kind == "llama" else "qwen2_5")
    if kind == "qwen2-base":
        tokenizer.eos_token = ENDOFTEXT
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    common = dict(
        vocab_size=QWEN25_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    if kind == "llama":
        config = LlamaConfig(tie_word_embeddings=False, attention_bias=False, **common)
    else:
        config = Qwen2Config(tie_word_embeddings=True, **common)
    config.dtype = torch.bfloat16
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    if kind == "qwen2-instruct":
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        model.generation_config = GenerationConfig(
            bos_token_id=common["bos_token_id"],
            eos_token_id=[im_end, common["bos_token_id"]],
            pad_token_id=pad_id,
            do_sample=True,
            temperature=0.7,
            top_p=0.8,
            top_k=20,
            repetition_penalty=1.05,
        )
    else:
        model.generation_config = GenerationConfig(
            bos_token_id=common["bos_token_id"], eos_token_id=eos_id, max_new_tokens=2048, do_sample=False
        )
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    (path / "README.md").write_text(
        f"Stand-in `{kind}` written by `course_utils.models.build_standin` (random weights, seed {seed}): "
        "the shape of a real checkpoint, not a trained model.\n",
        encoding="utf-8",
    )
    return path


def reference_loss(
    model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", num_documents: int = 4, kind: str = "text"
) -> float:
    """Mean next-token loss (nats) of ``model`` on a few fixed examples of the project's data.

    ``kind="text"``: the first documents of the pretraining corpus (what a base model knows); ``kind="chat"``: the
    assistant replies of the first checkable tasks in ChatML (what an SFT model knows; needs ``<|im_start|>``).
    """
    import torch

    from course_utils.loss import IGNORE_INDEX
    from course_utils.tokenizer import iter_corpus_texts

    examples: list[tuple[list[int], list[int]]] = []
    if kind == "text":
        for _, text in zip(range(num_documents), iter_corpus_texts()):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:128]
            examples.append((ids, ids))
    elif kind == "chat":
        from course_utils import sft

        for row in tasks.load_task_rows(DATA_DIR / "tasks_train.jsonl", limit=2 * num_documents):
            item = sft.encode_chat(tasks.task_to_messages(row), tokenizer)
            examples.append((item["input_ids"], item["labels"]))
    else:
        raise ValueError(f"kind must be 'text' or 'chat', not {kind!r}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for ids, labels in examples:
            labels_t = torch.tensor([labels], device=device)
            out = model(input_ids=torch.tensor([ids], device=device), labels=labels_t)
            n = int((labels_t[:, 1:] != IGNORE_INDEX).sum())
            total += float(out.loss) * n
            count += n
    model.train(was_training)
    return total / count


def is_trained(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", ratio: float = 0.6) -> bool:
    """Whether ``model`` has measurably learned something: its loss on corpus text, or on the assistant replies of
    chat tasks, is below ``ratio`` x the loss of a uniform guess, ``log(vocabulary)``. A random initialisation (the
    CPU stand-ins) scores ~1.0 on both; tiny-base ~0.07 on text (~0.57 on the chats it never saw); tiny-sft ~0.08 on
    the chats and ~0.38 on text (SFT cost it part of the corpus); a pretrained hub model is well under 0.6 on text. The notebooks apply their learning-quality thresholds
    only where this holds, and say so; every check of a mechanism (shapes, masks, equalities with the library)
    applies always."""
    import math

    threshold = ratio * math.log(len(tokenizer))
    if reference_loss(model, tokenizer, kind="text") < threshold:
        return True
    vocab = tokenizer.get_vocab()
    return (
        "<|im_start|>" in vocab and "<|im_end|>" in vocab and reference_loss(model, tokenizer, kind="chat") < threshold
    )


def check_fits(notebook: str, name: str, device: "torch.device | str") -> int:
    """Before loading ``name``: predict what ``notebook`` needs on ``device`` (``configs/notebook_profiles.json``,
    :func:`course_utils.memory.notebook_need`) and refuse with one sentence when the device cannot hold it.
    Returns the predicted bytes (also recorded as the run's ``predicted_mib`` figure)."""
    from course_utils import memory

    need = memory.check_fits(notebook, load_config(name), device)
    env.record_key_figure("predicted_mib", round(need / 2**20))
    return need
