"""Export a trained causal LM for other runtimes, and verify each export against the PyTorch logits.

Notebook 11's "转换" step, on every model the workbook trains (and the same on ``Qwen/Qwen2.5-0.5B``):

* ONNX: :func:`export_onnx` (``torch.onnx`` dynamo exporter, logits only) + :func:`onnx_session` /
  :func:`onnx_logits` (run with onnxruntime);
* GGUF (llama.cpp): :func:`export_gguf` writes llama.cpp's ``qwen2`` tensor names (:func:`gguf_tensor_name`,
  checked against the ``gguf`` package's own table by :func:`gguf_tensor_name_library`) and the tokenizer metadata;
  :func:`read_gguf` + :func:`verify_gguf` read the file back and compare its weights and tokenizer with the model's.

Evaluation, saving and reloading are in :mod:`course_utils.evaluation`; what TensorRT would need is in notebook 11.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils.evaluation import logits_of, max_abs_diff

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import numpy
    import torch


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
            torch.onnx.export(
                _logits_only(model),
                (input_ids,),
                str(path),
                input_names=["input_ids"],
                output_names=["logits"],
                dynamo=True,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
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

    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layers).get_name(
        hf_name, try_suffixes=(".weight", ".bias")
    )


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
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "ids": ids,
        "chat_template": tokenizer.chat_template or "",
    }


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
        gg = (
            "token_embd.weight"
            if hf_name == "lm_head.weight" and "output.weight" not in contents.tensors
            else gguf_tensor_name(hf_name)
        )
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


def verify_gguf(
    model: Any, tokenizer: Any, path: str | Path, input_ids: "torch.Tensor | None" = None, atol: float = 0.0
) -> GGUFCheck:
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
    expected = {
        gguf_tensor_name(n): _gguf_layout(n, t.detach().cpu().float(), config)
        for n, t in model.state_dict().items()
        if not (tied and n == "lm_head.weight")
    }
    assert set(contents.tensors) == set(expected), (
        f"tensor names differ: {sorted(set(contents.tensors) ^ set(expected))[:5]}"
    )
    arch = gguf_arch(config)
    library_ok = all(
        gguf_tensor_name_library(n, config.num_hidden_layers, arch) == gguf_tensor_name(n)
        for n in model.state_dict()
        if not (tied and n == "lm_head.weight")
    )
    assert library_ok, "hand-written names differ from gguf.get_tensor_name_map"
    worst = 0.0
    for name, tensor in expected.items():
        got = contents.tensors[name]
        assert tuple(got.shape) == tuple(tensor.shape), f"{name}: shape {got.shape} != {tuple(tensor.shape)}"
        worst = max(worst, max_abs_diff(tensor.float(), got.astype(np.float32)))
    assert worst <= atol, f"tensor values differ by {worst} > atol {atol}"
    meta = contents.metadata
    assert meta["general.architecture"] == arch
    for key, value in {
        f"{arch}.block_count": config.num_hidden_layers,
        f"{arch}.embedding_length": config.hidden_size,
        f"{arch}.feed_forward_length": config.intermediate_size,
        f"{arch}.attention.head_count": config.num_attention_heads,
        f"{arch}.attention.head_count_kv": config.num_key_value_heads,
    }.items():
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
    return GGUFCheck(
        n_tensors=len(contents.tensors),
        names_match_library=library_ok,
        max_value_diff=worst,
        max_logit_diff=logit_diff,
        tokens_match=tokens_ok,
        merges_match=merges_ok,
        special_ids=ids,
        file_bytes=Path(path).stat().st_size,
    )
