"""After training: evaluate any causal LM, save and reload it, merge adapters, export to ONNX and GGUF, verify.

Notebook 11 teaches these steps ("训练完成后的动作": save, convert, verify, version) on every model the
workbook trains; the functions work the same on a hub model such as ``Qwen/Qwen2.5-0.5B``.

* evaluation: :func:`heldout_blocks` packs the pretraining documents the tiny base never trained on
  (:func:`unseen_documents`: none of their tokens is in a training block of ``scripts/make_tiny_base.py``'s
  ``train_test_split(test_size=0.02, seed=0)``); :func:`evaluate_model` measures held-out perplexity, task accuracy on
  ``data_samples/tasks_test.jsonl`` (scored by ``datagen.score_answer``) and a few greedy generations;
  :func:`evaluation_table` / :func:`generations_table` put several models side by side;
* saving: :func:`save_model` (safetensors + tokenizer + ``metadata.json`` + model card), :func:`save_adapter`
  (the LoRA weights alone, by hand with ``get_peft_model_state_dict`` or with ``save_pretrained``),
  :func:`merge_adapter` (``merge_and_unload`` on a copy); every round trip is checked with :func:`max_abs_diff`
  of the logits;
* export: :func:`export_onnx` + :func:`onnx_logits` (``torch.onnx`` dynamo exporter, run with onnxruntime);
  :func:`export_gguf` + :func:`read_gguf` + :func:`verify_gguf` (``gguf`` package, llama.cpp's ``qwen2`` tensor
  names, tokenizer metadata) (what TensorRT would need: notebook 11);
* documentation: :func:`write_model_card` (README.md next to a saved model).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils import DATA_DIR, TINY_BASE_DIR, env

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    import numpy
    import pandas
    import torch

#: Same packing and split as the pretraining scripts, so "held-out" means blocks the base never trained on.
HELDOUT_BLOCK_SIZE: int = 128
HELDOUT_TEST_SIZE: float = 0.02
HELDOUT_SEED: int = 0
#: Part of the key of :func:`unseen_documents`'s cached answer: bump it when the way the answer is computed changes.
_UNSEEN_CACHE_VERSION: int = 1

#: Default prompts shown side by side: two checkable tasks and one open question per language.
DEFAULT_GENERATION_PROMPTS: tuple[str, ...] = (
    "计算下面的算式。\n3 + 4",
    "Give the first letter of this word.\nriver",
    "介绍一下你自己。",
)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def block_split_documents(corpus: str | Path | None = None, block_size: int = HELDOUT_BLOCK_SIZE,
                          test_size: float = HELDOUT_TEST_SIZE, seed: int = HELDOUT_SEED) -> tuple[set[int], set[int]]:
    """Row indices of the documents in the training blocks and in the test blocks of ``scripts/make_tiny_base.py``'s
    split (packed with the tiny base's tokenizer, ``train_test_split`` of the blocks); the two sets overlap."""
    from course_utils import tokenizer as tok
    from course_utils.data import load_corpus, tokenize_and_pack

    raw = load_corpus(Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl")
    packed = tokenize_and_pack(raw, tok.load_tiny_tokenizer(), block_size=block_size,
                               document_ids=True)
    split = packed.train_test_split(test_size=test_size, seed=seed)
    return ({d for block in split["train"]["document"] for d in block},
            {d for block in split["test"]["document"] for d in block})


@functools.lru_cache(maxsize=4)
def unseen_documents(corpus: str | Path | None = None, block_size: int = HELDOUT_BLOCK_SIZE,
                     test_size: float = HELDOUT_TEST_SIZE, seed: int = HELDOUT_SEED) -> tuple[int, ...]:
    """Row indices of the corpus documents the committed tiny base never trained on.

    ``scripts/make_tiny_base.py`` packs the corpus with the tiny tokenizer and splits the *blocks*
    (``train_test_split(test_size, seed)``). A document cut across a train and a test block was partly trained on, so
    the test blocks alone are not held out (54 % of the documents they touch are also in training blocks). A
    document is unseen when none of its tokens is in a training block and no exact copy of it is: the documents of
    test blocks only, and the few whose tokens fell in a packing remainder.

    Deciding this tokenises the whole corpus (~4 s on 2 cores), so the answer is kept in ``env.cache_dir()`` under a
    key made of the corpus's and the tiny tokenizer's SHA-256 and the split's settings: a changed corpus, tokenizer
    or setting is a new key, never a stale answer.
    """
    from course_utils.data import load_corpus
    from course_utils.train import file_sha256

    corpus_path = Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl"
    key = hashlib.sha256(json.dumps([_UNSEEN_CACHE_VERSION, file_sha256(corpus_path),
                                     file_sha256(TINY_BASE_DIR / "tokenizer.json"), block_size, test_size,
                                     seed]).encode()).hexdigest()[:16]
    cached = env.cache_dir() / "unseen_documents" / f"{key}.json"
    try:
        return tuple(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # not computed yet on this machine (or a damaged file): compute it
        pass
    raw = load_corpus(corpus_path)
    trained, _ = block_split_documents(corpus, block_size, test_size, seed)
    texts = raw["text"]
    trained_texts = {texts[d] for d in trained}  # an exact duplicate of a trained document is not unseen
    unseen = tuple(d for d in range(len(raw)) if d not in trained and texts[d] not in trained_texts)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(unseen), encoding="utf-8")
    partial.replace(cached)  # atomic: a notebook running at the same time reads the old file or the new one
    return unseen


def heldout_blocks(tokenizer: Any, corpus: str | Path | None = None, block_size: int = HELDOUT_BLOCK_SIZE,
                   test_size: float = HELDOUT_TEST_SIZE, seed: int = HELDOUT_SEED,
                   max_blocks: int | None = None) -> "datasets.Dataset":
    """Packed blocks of the pretraining documents the tiny base never saw, tokenised with ``tokenizer``.

    The documents are :func:`unseen_documents` (decided with the tiny base's own tokenizer and split, so every model
    is scored on the same texts); they are packed like the pretraining data (``<|endoftext|>`` after each document,
    blocks of ``block_size``). Documents are chosen first and packed second, so no block mixes in trained text.
    """
    from course_utils.data import load_corpus, tokenize_and_pack

    corpus = Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl"
    raw = load_corpus(corpus)
    held = tokenize_and_pack(raw.select(unseen_documents(corpus, block_size, test_size, seed)), tokenizer,
                             block_size=block_size)
    if max_blocks is not None:
        held = held.select(range(min(max_blocks, len(held))))
    return held


@dataclass
class ModelReport:
    """What :func:`evaluate_model` measured for one model."""

    name: str
    loss: float
    perplexity: float
    accuracy: float
    by_task: dict[str, float]
    generations: dict[str, str]
    predictions: list[str] = field(repr=False, default_factory=list)
    n_blocks: int = 0
    n_tasks: int = 0
    num_parameters: int = 0
    seconds: float = 0.0

    def row(self, digits: int = 3) -> dict[str, Any]:
        """A flat, rounded row for a table."""
        out: dict[str, Any] = {"model": self.name, "params": self.num_parameters,
                               "heldout_loss": round(self.loss, digits), "perplexity": round(self.perplexity, 2),
                               "task_acc": round(self.accuracy, digits)}
        out.update({f"acc_{task}": round(value, digits) for task, value in sorted(self.by_task.items())})
        return out


def _unique_parameters(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def evaluate_model(model: Any, tokenizer: Any, name: str = "model", *, heldout: Any = None,
                   task_rows: Sequence[Mapping[str, Any]] | None = None,
                   generation_prompts: Sequence[str] = DEFAULT_GENERATION_PROMPTS, max_new_tokens: int = 16,
                   batch_size: int = 64) -> ModelReport:
    """Evaluate any causal LM (plain, PEFT-wrapped or merged) the same way.

    * held-out perplexity: token-weighted mean next-token cross-entropy on ``heldout`` (packed blocks with
      ``input_ids`` / ``labels``; default :func:`heldout_blocks` of ``tokenizer``), ``exp`` of it;
    * task accuracy: greedy replies with the chat template to ``task_rows`` (default: all of ``tasks_test.jsonl``)
      scored by ``datagen.score_answer``, overall and per task;
    * generations: greedy replies to ``generation_prompts`` (single user turns), for reading side by side.
    """
    from course_utils.sft import generate_answers, task_accuracy
    from course_utils.train import dataset_perplexity

    started = time.perf_counter()
    heldout = heldout if heldout is not None else heldout_blocks(tokenizer)
    from course_utils.sft import load_task_rows

    task_rows = list(task_rows) if task_rows is not None else load_task_rows()
    was_training = model.training
    model.eval()
    loss, ppl = dataset_perplexity(model, heldout, batch_size=16)
    by_task, predictions = task_accuracy(model, tokenizer, task_rows, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, by_task=True, return_predictions=True)
    prompts = [[{"role": "user", "content": prompt}] for prompt in generation_prompts]
    replies = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    model.train(was_training)
    accuracy = by_task.pop("all")
    if not math.isfinite(loss):
        raise FloatingPointError(f"{name}: held-out loss is not finite ({loss})")
    return ModelReport(name=name, loss=loss, perplexity=ppl, accuracy=accuracy, by_task=by_task,
                       generations=dict(zip(generation_prompts, replies)), predictions=predictions,
                       n_blocks=len(heldout), n_tasks=len(task_rows), num_parameters=_unique_parameters(model),
                       seconds=time.perf_counter() - started)


def evaluation_table(reports: Sequence[ModelReport], digits: int = 3) -> "pandas.DataFrame":
    """One row per model: parameters, held-out loss and perplexity, task accuracy overall and per task."""
    import pandas as pd

    return pd.DataFrame([report.row(digits) for report in reports]).set_index("model")


def generations_table(reports: Sequence[ModelReport], width: int = 40) -> "pandas.DataFrame":
    """Prompts as rows, models as columns, each cell a (shortened, one-line) greedy reply."""
    import pandas as pd

    def short(text: str) -> str:
        text = text.replace("\n", " ⏎ ")
        return text if len(text) <= width else text[: width - 1] + "…"

    prompts = list(reports[0].generations)
    data = {report.name: [short(report.generations[p]) for p in prompts] for report in reports}
    return pd.DataFrame(data, index=[p.replace("\n", " ⏎ ") for p in prompts])


# ----------------------------------------------------------------------------------------------------------------
# Logits and round trips
# ----------------------------------------------------------------------------------------------------------------


def probe_ids(tokenizer: Any, text: str = "Mira 的首都是什么？The capital is", length: int = 32) -> "torch.Tensor":
    """A fixed ``(1, length)`` batch of token ids for comparing logits (the text repeated, cut to ``length``)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (length // max(1, len(ids)) + 1))[:length]
    return torch.tensor([ids], dtype=torch.long)


def logits_of(model: Any, input_ids: "torch.Tensor") -> "torch.Tensor":
    """Float32 logits ``(batch, seq, vocab)`` of ``model`` in eval mode (dropout off), without a KV cache."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False).logits.float()
    model.train(was_training)
    return out


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute element-wise difference of two arrays/tensors of the same shape (torch or numpy)."""
    import numpy as np

    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, *, arguments: Mapping[str, Any] | None = None,
               data_files: Sequence[str | Path] = (), extra: Mapping[str, Any] | None = None,
               card: Mapping[str, Any] | None = None) -> Path:
    """``save_pretrained`` model (safetensors) and tokenizer, then ``metadata.json`` and a README.md model card.

    ``metadata.json`` is ``course_utils.train.write_metadata`` (arguments, data fingerprints, git commit, library
    versions, ``extra``); ``card`` holds the keyword arguments of :func:`write_model_card`.
    """
    from course_utils.train import write_metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with env.quiet_transformers():
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    write_metadata(out, dict(arguments or {}), data_files, extra=extra)
    if card is not None:
        write_model_card(out, **card)
    return out


def reload_model(out_dir: str | Path) -> tuple[Any, Any]:
    """Load a folder written by :func:`save_model` (``trust_remote_code=False``); model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with env.quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)
    return model.eval(), tokenizer


def save_adapter(peft_model: Any, out_dir: str | Path, method: str = "library") -> Path:
    """Save only the adapter weights of a PEFT model (kilobytes, not the base model).

    ``method="scratch"``: ``peft.get_peft_model_state_dict`` (the adapter tensors, with the adapter name removed
    from their keys) written with ``safetensors.torch.save_file`` plus ``adapter_config.json``;
    ``method="library"``: ``peft_model.save_pretrained`` (writes the same two files).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method == "library":
        peft_model.save_pretrained(str(out))
    elif method == "scratch":
        state = {key: value.detach().cpu().contiguous() for key, value in get_peft_model_state_dict(peft_model).items()}
        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        peft_model.peft_config["default"].save_pretrained(str(out))
    else:
        raise ValueError(f"method must be 'library' or 'scratch', not {method!r}")
    return out


def load_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """``PeftModel.from_pretrained`` on ``base_model`` (must be the same base weights the adapter was trained on)."""
    from peft import PeftModel

    with env.quiet_transformers():
        return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval()


def merge_adapter(peft_model: Any) -> Any:
    """A merged copy (``W + B A * alpha / r`` folded into each base weight): ``merge_and_unload`` on a deep copy,
    in eval mode, so the PEFT model itself is left untouched."""
    merged = copy.deepcopy(peft_model).eval().merge_and_unload()
    return merged.eval()


def folder_bytes(path: str | Path, pattern: str = "*") -> int:
    """Total size in bytes of the files in ``path`` matching ``pattern``."""
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file())


# ----------------------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------------------


def _logits_only(model: Any) -> "torch.nn.Module":
    import torch

    class LogitsOnly(torch.nn.Module):
        """``input_ids -> logits``: one tensor in, one out, no KV cache (what the exporter can trace)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: "torch.Tensor") -> "torch.Tensor":
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly(model).eval()


def export_onnx(model: Any, path: str | Path, input_ids: "torch.Tensor", opset: int = 18) -> Path:
    """Export ``input_ids -> logits`` to ONNX with ``torch.onnx.export(dynamo=True)`` for a FIXED input shape.

    The graph takes exactly ``input_ids.shape`` (e.g. ``(1, 32)``): shorter prompts are right-padded (causal
    attention: padding after a token cannot change that token's logits). The older TorchScript exporter
    (``dynamo=False``) fails on this model (``aten::diff`` in the mask code is not supported). Warnings and the
    exporter's log lines are silenced.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            torch.onnx.export(_logits_only(model), (input_ids,), str(path), input_names=["input_ids"],
                              output_names=["logits"], dynamo=True, opset_version=opset, external_data=False,
                              verbose=False)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return path


def onnx_session(path: str | Path, threads: int = 2) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logits(path_or_session: Any, input_ids: Any) -> "numpy.ndarray":
    """Logits from onnxruntime for ``input_ids`` (torch tensor or numpy array, int64, the exported shape)."""
    import numpy as np

    session = path_or_session if hasattr(path_or_session, "run") else onnx_session(path_or_session)
    ids = input_ids.detach().cpu().numpy() if hasattr(input_ids, "detach") else np.asarray(input_ids)
    return session.run(["logits"], {"input_ids": ids.astype(np.int64)})[0]


# ----------------------------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------------------------

#: Hugging Face Qwen2 parameter name (inside ``model.layers.{i}``) -> llama.cpp GGUF name (inside ``blk.{i}``).
_LAYER_NAMES: dict[str, str] = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES: dict[str, str] = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Qwen2 (also Llama) parameter, e.g. ``model.layers.0.self_attn.q_proj.weight`` ->
    ``blk.0.attn_q.weight``. Written by hand; :func:`verify_gguf` checks it against ``gguf.get_tensor_name_map``."""
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
    if match:
        layer, module, kind = match.groups()
        if module not in _LAYER_NAMES:
            raise KeyError(f"no GGUF name for {hf_name!r}")
        return f"blk.{layer}.{_LAYER_NAMES[module]}.{kind}"
    match = re.fullmatch(r"(.+)\.(weight|bias)", hf_name)
    if match and match.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[match.group(1)]}.{match.group(2)}"
    raise KeyError(f"no GGUF name for {hf_name!r}")


#: The decoder layouts this exporter writes: transformers' ``model_type`` is also llama.cpp's architecture name.
GGUF_ARCHITECTURES: tuple[str, ...] = ("qwen2", "llama")


def gguf_arch(config: Any) -> str:
    """llama.cpp's architecture name for ``config`` (``qwen2`` or ``llama``); a clear error for any other."""
    if config.model_type not in GGUF_ARCHITECTURES:
        raise ValueError(f"this exporter writes the qwen2 and llama layouts; got model_type={config.model_type!r}")
    return config.model_type


def llama_qk_permute(weight: "torch.Tensor", n_head: int, inverse: bool = False) -> "torch.Tensor":
    """The row order llama.cpp's ``llama`` architecture expects for q/k projections.

    Hugging Face's Llama applies RoPE with ``rotate_half`` (dimension i pairs with i + d/2); llama.cpp's ``llama``
    kernels pair neighbours (2i, 2i+1), so its converter interleaves each head's two halves
    (``reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``). Qwen2 needs nothing: llama.cpp runs it with the NEOX (half-split)
    RoPE, the same as transformers. ``inverse=True`` undoes it.
    """
    rows = weight.shape[0]
    shape = (n_head, rows // n_head // 2, 2) if inverse else (n_head, 2, rows // n_head // 2)
    return weight.reshape(*shape, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_layout(hf_name: str, tensor: "torch.Tensor", config: Any, inverse: bool = False) -> "torch.Tensor":
    """``tensor`` as the GGUF file stores it (``inverse``: back to Hugging Face's layout)."""
    if gguf_arch(config) != "llama":
        return tensor
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return llama_qk_permute(tensor, config.num_attention_heads, inverse)
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return llama_qk_permute(tensor, config.num_key_value_heads, inverse)
    return tensor


def gguf_tensor_name_library(hf_name: str, n_layers: int, arch: str = "qwen2") -> str | None:
    """The same mapping from the ``gguf`` package (the table llama.cpp's converter uses)."""
    import gguf

    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, Mapping) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def tokenizer_gguf_fields(tokenizer: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """Tokenizer metadata for GGUF (llama.cpp's ``gpt2`` BPE kind): tokens by id, token types, merges, special ids.

    When the embedding has more rows than the tokenizer has tokens (Qwen2.5: 151,936 rows, 151,665 tokens), the list
    is padded with ``[PAD{id}]`` tokens of type UNUSED, as llama.cpp's converter does, so ``n_vocab`` equals the rows.
    """
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers are handled here, got {model.get('type')!r}")
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids) | {t["id"] for t in backend.get("added_tokens", []) if t.get("special")}
    types = [int(gguf.TokenType.CONTROL) if i in special else int(gguf.TokenType.NORMAL) for i in range(n)]
    if vocab_size is not None and vocab_size > n:
        tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
        types += [int(gguf.TokenType.UNUSED)] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    ids = {
        "bos": tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids,
            "chat_template": tokenizer.chat_template or ""}


def export_gguf(model: Any, tokenizer: Any, path: str | Path, dtype: str = "f32", name: str = "tiny") -> Path:
    """Write ``model`` + ``tokenizer`` as a GGUF file for llama.cpp's ``qwen2`` (or ``llama``) architecture.

    Tensors get llama.cpp names (:func:`gguf_tensor_name`); a tied ``lm_head`` is not written (llama.cpp reuses
    ``token_embd``). ``dtype="f16"`` stores 2-D weights in float16 (1-D norms and biases stay float32, as
    llama.cpp's converter does). Metadata: the architecture hyper-parameters and the tokenizer (tokens, token
    types, merges, bos/eos/pad ids, chat template).
    """
    import gguf
    import numpy as np

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    config = model.config
    arch = gguf_arch(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    tok = tokenizer_gguf_fields(tokenizer, int(config.vocab_size))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    if tok["ids"]["bos"] is not None:
        writer.add_bos_token_id(int(tok["ids"]["bos"]))
    writer.add_eos_token_id(int(tok["ids"]["eos"]))
    writer.add_pad_token_id(int(tok["ids"]["pad"]))
    writer.add_add_bos_token(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        array = _gguf_layout(hf_name, tensor.detach().cpu().float(), config).numpy()
        if dtype == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(gguf_tensor_name(hf_name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@dataclass
class GGUFContents:
    """What :func:`read_gguf` found: metadata fields (decoded) and tensors (numpy, in PyTorch's shape order)."""

    metadata: dict[str, Any]
    tensors: dict[str, "numpy.ndarray"]
    tensor_types: dict[str, str]


def read_gguf(path: str | Path) -> GGUFContents:
    """Read a GGUF file back with ``gguf.GGUFReader``.

    GGUF stores dimensions innermost-first (ggml order); the reader's ``data`` array already has the numpy
    (PyTorch) order, e.g. ``blk.0.attn_q.weight`` is ``(out_features, in_features)``. Arrays are copied out of the
    memory map.
    """
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    metadata: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = fld.contents()
        metadata[key] = value
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return GGUFContents(metadata=metadata, tensors=tensors, tensor_types=types)


def gguf_state_dict(contents: GGUFContents, model: Any) -> dict[str, "torch.Tensor"]:
    """The GGUF tensors back under the Hugging Face names of ``model`` (float32 torch tensors); a tied
    ``lm_head.weight`` is filled from ``token_embd.weight``."""
    import torch

    state = {}
    for hf_name in model.state_dict():
        gg = "token_embd.weight" if hf_name == "lm_head.weight" and "output.weight" not in contents.tensors \
            else gguf_tensor_name(hf_name)
        tensor = torch.from_numpy(contents.tensors[gg].astype("float32"))
        state[hf_name] = _gguf_layout(hf_name, tensor, model.config, inverse=True)
    return state


@dataclass
class GGUFCheck:
    """The comparison :func:`verify_gguf` made between a model and its GGUF file."""

    n_tensors: int
    names_match_library: bool
    max_value_diff: float
    max_logit_diff: float
    tokens_match: bool
    merges_match: bool
    special_ids: dict[str, int]
    file_bytes: int


def verify_gguf(model: Any, tokenizer: Any, path: str | Path, input_ids: "torch.Tensor | None" = None,
                atol: float = 0.0) -> GGUFCheck:
    """Read ``path`` back and compare it with ``model`` / ``tokenizer``; raise ``AssertionError`` on a mismatch.

    Checks: every tensor name equals the ``gguf`` package's own Qwen2 mapping; the set of names and each shape
    match the model; values match within ``atol`` (0 for f32; pass ~1e-3 for f16); the tokens (by id), merges,
    bos/eos/pad ids and architecture numbers match; and a fresh copy of the model loaded from the GGUF tensors
    gives the same logits on ``input_ids``.
    """
    import numpy as np

    contents = read_gguf(path)
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    expected = {gguf_tensor_name(n): _gguf_layout(n, t.detach().cpu().float(), config)
                for n, t in model.state_dict().items() if not (tied and n == "lm_head.weight")}
    assert set(contents.tensors) == set(expected), \
        f"tensor names differ: {sorted(set(contents.tensors) ^ set(expected))[:5]}"
    arch = gguf_arch(config)
    library_ok = all(gguf_tensor_name_library(n, config.num_hidden_layers, arch) == gguf_tensor_name(n)
                     for n in model.state_dict() if not (tied and n == "lm_head.weight"))
    assert library_ok, "hand-written names differ from gguf.get_tensor_name_map"
    worst = 0.0
    for name, tensor in expected.items():
        got = contents.tensors[name]
        assert tuple(got.shape) == tuple(tensor.shape), f"{name}: shape {got.shape} != {tuple(tensor.shape)}"
        worst = max(worst, max_abs_diff(tensor.float(), got.astype(np.float32)))
    assert worst <= atol, f"tensor values differ by {worst} > atol {atol}"
    meta = contents.metadata
    assert meta["general.architecture"] == arch
    for key, value in {f"{arch}.block_count": config.num_hidden_layers, f"{arch}.embedding_length": config.hidden_size,
                       f"{arch}.feed_forward_length": config.intermediate_size,
                       f"{arch}.attention.head_count": config.num_attention_heads,
                       f"{arch}.attention.head_count_kv": config.num_key_value_heads}.items():
        assert int(meta[key]) == int(value), f"{key}: {meta[key]} != {value}"
    tok = tokenizer_gguf_fields(tokenizer, int(config.vocab_size))
    tokens_ok = list(meta["tokenizer.ggml.tokens"]) == tok["tokens"]
    merges_ok = list(meta["tokenizer.ggml.merges"]) == tok["merges"]
    assert tokens_ok, "tokenizer.ggml.tokens differ from the tokenizer's vocabulary"
    assert merges_ok, "tokenizer.ggml.merges differ from the tokenizer's merges"
    ids = {"eos": int(meta["tokenizer.ggml.eos_token_id"]), "pad": int(meta["tokenizer.ggml.padding_token_id"])}
    if "tokenizer.ggml.bos_token_id" in meta:
        ids["bos"] = int(meta["tokenizer.ggml.bos_token_id"])
    assert ids["eos"] == tokenizer.eos_token_id and ids["pad"] == tokenizer.pad_token_id, f"special ids {ids}"
    logit_diff = 0.0
    if input_ids is not None:
        clone = copy.deepcopy(model).eval()
        clone.load_state_dict(gguf_state_dict(contents, model))
        logit_diff = max_abs_diff(logits_of(model, input_ids), logits_of(clone, input_ids))
    return GGUFCheck(n_tensors=len(contents.tensors), names_match_library=library_ok, max_value_diff=worst,
                     max_logit_diff=logit_diff, tokens_match=tokens_ok, merges_match=merges_ok, special_ids=ids,
                     file_bytes=Path(path).stat().st_size)


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------


def write_model_card(out_dir: str | Path, *, title: str, base_model: str, data: Sequence[str] | str,
                     steps: str, metrics: Mapping[str, Any] | None = None, load: str | None = None,
                     notes: Sequence[str] = (), filename: str = "README.md") -> Path:
    """Write a short model card (Markdown) next to a saved model: what it is, the data, the training steps, the
    measured numbers, how to load it, and caveats. No timestamps, so the same run writes the same card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = [data] if isinstance(data, str) else list(data)
    lines = [f"# {title}", "", f"- **Base model**: {base_model}", "- **Training data**:"]
    lines += [f"  - {item}" for item in data]
    lines += [f"- **Training**: {steps}", ""]
    if metrics:
        lines += ["## Measured", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()]
        lines.append("")
    if load:
        lines += ["## Load", "", "```python", load, "```", ""]
    lines += ["## Caveats", "", "- A teaching model (~1.5M parameters) trained on generated data; not for real use."]
    lines += [f"- {note}" for note in notes]
    lines += ["- `metadata.json` in this folder: data fingerprint (SHA-256), git commit, arguments, library versions.",
              ""]
    path = out / filename
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
