"""Training memory: ZeRO model-state accounting, DeepSpeed's estimators, activations, measurement, calculator.

Three ways to count the memory of model states (weights, gradients, optimizer states) per GPU:

* ``zero_model_states``   the ZeRO paper (Rajbhandari et al. 2020, arXiv:1910.02054, section 3 and 5):
  mixed-precision Adam keeps 2 bytes/param 16-bit weights, 2 bytes/param 16-bit gradients and
  K = 12 bytes/param optimizer states (fp32 master weights, momentum, variance); stage 1 partitions the
  optimizer states over N GPUs, stage 2 also the gradients, stage 3 also the weights.
* ``slides_table_bytes``    the lecture notes' table (4P, 2P + 2P/N, P + 3P/N, 4P/N with P = bytes of the
  weights). It is exact for pure fp32 Adam (P = 4 bytes/param) and half the truth for mixed precision
  read with 2-byte P.
* ``ds_zero2_estimate`` / ``ds_zero3_estimate``  a byte-exact re-implementation of DeepSpeed 0.19.8's
  ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``
  (``deepspeed/runtime/zero/stage_1_and_2.py`` and ``stage3.py``), which count 18 bytes/param of
  partitioned states (they add fp32 gradients) and a buffer of 4 x the largest layer for ZeRO-3.

Activations: ``activation_bytes`` (Qwen2/Llama decoder as implemented by transformers 5, derived by
counting what autograd saves; checked against ``SavedTensorCounter``) and ``korthikanti_layer_bytes``
(the GPT formula of Korthikanti et al. 2022, arXiv:2205.05198, eq. 1-2).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from course_utils.models import PRESETS

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import matplotlib.figure
    import torch

GIB: int = 2**30
GB: int = 10**9

# ---------------------------------------------------------------------------------------------------------
# 1. The ZeRO paper's accounting (mixed-precision Adam)
# ---------------------------------------------------------------------------------------------------------

#: bytes per parameter in mixed-precision Adam training (ZeRO paper): 16-bit weights, 16-bit gradients,
#: fp32 master weights + fp32 momentum + fp32 variance (K = 4 + 4 + 4 = 12).
PAPER_BYTES: dict[str, int] = {"params": 2, "grads": 2, "optimizer": 12}
#: the same for plain fp32 Adam/AdamW (no master copy needed): what this workbook does on a CPU.
FP32_ADAM_BYTES: dict[str, int] = {"params": 4, "grads": 4, "optimizer": 8}


@dataclass(frozen=True)
class ModelStates:
    """Model-state bytes held by ONE GPU (``params``, ``grads``, ``optimizer``) and offloaded to its CPU."""

    params: int
    grads: int
    optimizer: int
    cpu: int = 0

    @property
    def gpu_total(self) -> int:
        return self.params + self.grads + self.optimizer


def check_zero_stage(stage: int) -> None:
    """Refuse anything but ZeRO stage 0, 1, 2 or 3 (a clear error instead of a silently wrong table)."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")


def zero_model_states(
    num_params: int,
    stage: int,
    num_gpus: int = 1,
    param_bytes: int = 2,
    grad_bytes: int = 2,
    optimizer_bytes: int = 12,
    offload_optimizer: bool = False,
    offload_param: bool = False,
) -> ModelStates:
    """Per-GPU model-state bytes of ZeRO stage ``stage`` on ``num_gpus`` data-parallel GPUs (ZeRO paper).

    Stage 0 keeps everything on every GPU; stage 1 partitions the optimizer states (``/N``), stage 2 also
    the gradients, stage 3 also the weights. ``offload_optimizer`` (ZeRO-Offload) moves the optimizer states
    and this GPU's gradient partition to CPU memory; ``offload_param`` (ZeRO-Infinity, stage 3 only) also
    moves the weight partition. Integer division: a partition of ``num_params / N`` parameters.
    """
    check_zero_stage(stage)
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if offload_param and stage != 3:
        raise ValueError("offload_param needs ZeRO stage 3 (only stage 3 partitions the weights)")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage >= 1")
    n = num_gpus
    params = num_params * param_bytes // (n if stage >= 3 else 1)
    grads = num_params * grad_bytes // (n if stage >= 2 else 1)
    optimizer = num_params * optimizer_bytes // (n if stage >= 1 else 1)
    cpu = 0
    if offload_optimizer:
        cpu += optimizer + num_params * grad_bytes // n
        optimizer, grads = 0, 0
    if offload_param:
        cpu += params
        params = 0
    return ModelStates(params=params, grads=grads, optimizer=optimizer, cpu=cpu)


def slides_table_bytes(p_bytes: float, stage: int, num_gpus: int = 1) -> float:
    """The lecture notes' per-GPU table, ``P`` = bytes of the weights (activations left out).

    stage 0: ``4P``; stage 1: ``2P + 2P/N``; stage 2: ``P + 3P/N``; stage 3: ``4P/N``. It assumes the
    gradients are as large as the weights and the optimizer states twice as large, i.e. everything in one
    dtype and no fp32 master copy: exact for fp32 Adam (P = 4 bytes/param gives 16 bytes/param), but with
    16-bit weights (P = 2 bytes/param) it counts 8 bytes/param where mixed-precision Adam needs 16.
    """
    check_zero_stage(stage)
    p, n = p_bytes, num_gpus
    return {0: 4 * p, 1: 2 * p + 2 * p / n, 2: p + 3 * p / n, 3: 4 * p / n}[stage]


# ---------------------------------------------------------------------------------------------------------
# 2. DeepSpeed 0.19.8's estimators, re-implemented byte for byte
# ---------------------------------------------------------------------------------------------------------

#: DeepSpeed's comment in stage_1_and_2.py: "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit +
#: 8_optimizer_states_32bit(momentum and variance)"; plus 2 bytes/param of 16-bit weights on every GPU.
DS_PARTITIONED_BYTES: dict[str, int] = {"grads_16bit": 2, "grads_32bit": 4, "params_32bit": 4, "optimizer_32bit": 8}


def ds_zero2_estimate(
    total_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """``(cpu_bytes, gpu_bytes)`` exactly as ``estimate_zero2_model_states_mem_needs`` in DeepSpeed 0.19.8.

    GPU without offload: ``2Ψ + 18Ψ/N`` (N = all GPUs). With ``offload_optimizer=cpu``: ``2Ψ`` on the GPU and
    ``Ψ·max(4·N, 16)·buffer`` on each node's CPU. The float arithmetic keeps DeepSpeed's operation order on
    purpose: ``int()`` truncates a float, so a different order can change the last byte.
    """
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def ds_zero3_estimate(
    total_params: int,
    largest_layer_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    cpu_offload_params: bool = True,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int, int]:
    """``(cpu_bytes, gpu_bytes, largest_layer_bytes)`` exactly as DeepSpeed 0.19.8's
    ``estimate_zero3_model_states_mem_needs``.

    The GPU always holds ``4 × largest layer`` (16-bit weights + 16-bit gradients of the one layer being
    gathered); without offload add ``18Ψ/N``, with ``offload_optimizer`` only add ``2Ψ/N`` (the 16-bit weight
    partition), with ``offload_param`` as well nothing more. ``zero_init`` (``deepspeed.zero.Init``) builds the
    model already partitioned, so the CPU never holds a full fp32 copy per GPU.
    """
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def ds_count_params(model: "torch.nn.Module") -> tuple[int, int]:
    """``(total_params, largest_layer_params)`` counted like DeepSpeed's ``model_to_params``.

    Shared (tied) tensors count once (keyed by ``data_ptr``); the largest layer is the module with the most
    parameters of its own (``recurse=False``), e.g. the embedding of a small-vocabulary-heavy model.
    """
    total = sum({p.data_ptr(): p.numel() for p in model.parameters()}.values())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def ds_estimate_table(
    stage: int,
    total_params: int,
    largest_layer_params: int | None = None,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> str:
    """The text DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs_all_cold`` prints, from our functions."""
    try:  # DeepSpeed formats an enum here; on Python 3.11 that prints "OffloadDeviceEnum.cpu", not "cpu "
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum

        cpu_str = f"{OffloadDeviceEnum.cpu:4}"
    except ImportError:
        cpu_str = "cpu "
    nodes_str = "nodes" if num_nodes > 1 else "node"
    gpus_str = "GPUs" if num_gpus_per_node > 1 else "GPU"
    lines = [
        "Estimated memory needed for params, optim states and gradients for a:",
        f"HW: Setup with {num_nodes} {nodes_str}, {num_gpus_per_node} {gpus_str} per node.",
    ]
    if stage == 2:
        lines.append(f"SW: Model with {int(total_params / 1e6)}M total params.")
        lines.append("  per CPU  |  per GPU |   Options")
        for offload in (True, False):
            cpu, gpu = ds_zero2_estimate(total_params, num_gpus_per_node, num_nodes, offload, additional_buffer_factor)
            lines.append(
                f" {cpu / 2**30:7.2f}GB | {gpu / 2**30:6.2f}GB | offload_optimizer={cpu_str if offload else 'none'}"
            )
    elif stage == 3:
        if largest_layer_params is None:
            raise ValueError("ZeRO-3's estimate needs largest_layer_params")
        lines.append(
            f"SW: Model with {int(total_params / 1e6)}M total params, {int(largest_layer_params / 1e6)}M largest layer params."
        )
        lines.append("  per CPU  |  per GPU |   Options")
        for offload in (True, False):
            for offload_params in (True, False):
                if not offload and offload_params:
                    continue
                for zero_init in (True, False):
                    cpu, gpu, _ = ds_zero3_estimate(
                        total_params,
                        largest_layer_params,
                        num_gpus_per_node,
                        num_nodes,
                        offload,
                        offload_params,
                        zero_init,
                        additional_buffer_factor,
                    )
                    options = (
                        f"offload_param={cpu_str if offload_params else 'none'}, "
                        f"offload_optimizer={cpu_str if offload else 'none'}, zero_init={int(zero_init)}"
                    )
                    lines.append(f" {cpu / 2**30:7.2f}GB | {gpu / 2**30:6.2f}GB | {options}")
    else:
        raise ValueError(f"DeepSpeed has estimators for stages 2 and 3 only, got {stage}")
    return "\n".join(lines) + "\n"


def deepspeed_printed_table(
    stage: int, total_params: int, largest_layer_params: int | None = None, **kwargs: Any
) -> str:
    """Run DeepSpeed's own ``*_all_cold`` estimator and return what it prints (it returns None)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        if stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

            estimate_zero2_model_states_mem_needs_all_cold(total_params, **kwargs)
        elif stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

            estimate_zero3_model_states_mem_needs_all_cold(total_params, largest_layer_params, **kwargs)
        else:
            raise ValueError(f"DeepSpeed has estimators for stages 2 and 3 only, got {stage}")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# 3. Architectures and activation memory
# ---------------------------------------------------------------------------------------------------------

#: The decoder shape fields the calculator reads (``count_parameters_formula`` and the activation formulas).
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "tie_word_embeddings",
)  # fmt: skip
#: Decoder shapes for the calculator: "tiny" is ``models.PRESETS["tiny"]`` with the committed tokenizer's 4,096
#: tokens; the Qwen2.5 rows are copied from each model's config.json.
# fmt: off
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {key: 4096 if key == "vocab_size" else PRESETS["tiny"][key] for key in ARCHITECTURE_FIELDS},
    "Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
# fmt: on


def architecture(name_or_config: "str | Any") -> SimpleNamespace:
    """A config-like namespace (``hidden_size`` ...) for a preset name or any HF config object."""
    if isinstance(name_or_config, str):
        if name_or_config not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name_or_config!r}; known: {sorted(ARCHITECTURES)}")
        return SimpleNamespace(model_type="qwen2", head_dim=None, **ARCHITECTURES[name_or_config])
    keys = [*ARCHITECTURE_FIELDS, "model_type"]
    ns = SimpleNamespace(**{k: getattr(name_or_config, k) for k in keys})
    ns.head_dim = getattr(name_or_config, "head_dim", None)
    return ns


def architecture_params(arch: "str | Any") -> tuple[int, int]:
    """``(total_params, largest_layer_params)`` of an architecture by formula (largest: the embedding or the
    untied LM head, or an MLP projection, whichever is larger; same rule as ``ds_count_params``)."""
    from course_utils.models import count_parameters_formula

    cfg = architecture(arch)
    total = count_parameters_formula(cfg)
    largest = max(cfg.vocab_size * cfg.hidden_size, cfg.hidden_size * cfg.intermediate_size)
    return total, largest


def korthikanti_layer_bytes(seq_len: int, batch: int, hidden: int, heads: int, flash: bool = False) -> int:
    """Activation bytes of ONE GPT layer in 16-bit training, Korthikanti et al. 2022 (eq. 1):
    ``s·b·h·(34 + 5·a·s/h)``; flash attention drops the ``5·a·s²·b`` attention-matrix terms (scores,
    softmax output, dropout mask)."""
    s, b, h, a = seq_len, batch, hidden, heads
    return s * b * h * 34 + (0 if flash else 5 * a * s * s * b)


@dataclass(frozen=True)
class ActivationBytes:
    """Activation bytes of a forward pass kept for the backward pass (``layers`` is all layers together)."""

    layers: int
    head: int  # final norm, log-softmax of the loss, token ids and labels, RoPE tables
    logits: int  # the logits tensor the model returns (alive, not saved by autograd)
    recompute: int = 0  # with checkpointing: one layer's activations rebuilt during backward

    @property
    def saved(self) -> int:
        return self.layers + self.head

    @property
    def peak(self) -> int:
        return self.layers + self.head + self.logits + self.recompute


def activation_layer_elements(cfg: Any, seq_len: int, batch: int, attention: str = "sdpa") -> dict[str, int]:
    """Elements autograd saves in one Qwen2/Llama decoder layer of transformers 5, by kind (per batch).

    Per token: two RMSNorms save the input ``x``, ``x·rsqrt`` and the normalised output (``3h``) plus the
    ``rsqrt`` scalar each; q/k/v share one saved input; SDPA (flash-style) saves q, k, v, its output and a
    log-sum-exp per head (``2h + 2·kv + a``); eager attention saves q, k and v repeated to all heads, the
    softmax matrix (``a·s``) and the output (``4h + a·s``); the SwiGLU MLP saves gate, up, silu(gate) and
    their product (``4i``).
    """
    h, i, a = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or h // a
    kv = cfg.num_key_value_heads * head_dim
    tokens = seq_len * batch
    if attention == "sdpa":
        attn = 2 * a * head_dim + 2 * kv + a
    elif attention == "eager":
        attn = 4 * a * head_dim + a * seq_len
    else:
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
    return {"norms": tokens * (6 * h + 2), "attention": tokens * attn, "mlp": tokens * 4 * i}


def activation_bytes(
    arch: "str | Any",
    seq_len: int,
    batch: int,
    dtype_bytes: int = 4,
    attention: str = "sdpa",
    checkpointing: bool = False,
) -> ActivationBytes:
    """Predicted activation bytes of a Qwen2/Llama causal LM training step (transformers 5 implementation).

    ``dtype_bytes`` is the size of the activations (4 fp32, 2 bf16). In 16-bit, RMSNorm upcasts to fp32
    (its saved ``x`` and ``rsqrt`` are 4 bytes), SDPA's log-sum-exp is fp32 and the loss upcasts the logits
    to fp32 (an extra fp32 copy). With ``checkpointing`` each layer keeps only its input (``h`` per token)
    and one layer is recomputed at a time during backward (``recompute``); the RoPE tables are then not
    kept outside the checkpoints.
    """
    cfg = architecture(arch)
    e = dtype_bytes
    h, v = cfg.hidden_size, cfg.vocab_size
    tokens = seq_len * batch
    parts = activation_layer_elements(cfg, seq_len, batch, attention)
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    lse = tokens * cfg.num_attention_heads if attention == "sdpa" else 0
    # norms: x (fp32 when upcast) + rsqrt (fp32) + x*rsqrt and the normalised output (dtype e)
    norm_bytes = 2 * tokens * (4 * h + 4 + 2 * e * h)  # two RMSNorms per layer
    layer = norm_bytes + (parts["attention"] - lse) * e + lse * 4 + parts["mlp"] * e
    final_norm = tokens * (4 * h + 4 + 2 * e * h)  # one RMSNorm: x (fp32), rsqrt, x*rsqrt, output
    ids_labels = 2 * tokens * 8  # int64 input ids (embedding) and shifted labels (loss)
    log_softmax = tokens * v * 4  # the loss computes log_softmax in fp32 and saves its output
    upcast = tokens * v * 4 if e != 4 else 0  # logits.float() copy in 16-bit training
    rope = 2 * seq_len * head_dim * e if not checkpointing else 0
    head = final_norm + ids_labels + log_softmax + rope + 4  # + the scalar nll_loss keeps (total weight)
    logits = tokens * v * e + upcast
    if checkpointing:
        return ActivationBytes(layers=cfg.num_hidden_layers * tokens * h * e, head=head, logits=logits, recompute=layer)
    return ActivationBytes(layers=cfg.num_hidden_layers * layer, head=head, logits=logits)


# ---------------------------------------------------------------------------------------------------------
# 4. Measurement: count bytes on CPU, read the allocator on a GPU
# ---------------------------------------------------------------------------------------------------------


def _storage_key(t: "torch.Tensor") -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def tensor_bytes(tensors: Iterable["torch.Tensor"]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights count once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is not None:
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


class SavedTensorCounter:
    """Context manager counting the distinct storages autograd saves for backward, parameters excluded.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor an op saves for its backward passes
    through ``pack``. Checkpointed regions install their own hooks, so with activation checkpointing it
    sees only what the checkpoints keep (each layer's input).
    """

    def __init__(self, model: "torch.nn.Module | None" = None) -> None:
        self.exclude = {_storage_key(p) for p in model.parameters()} if model is not None else set()
        self.storages: dict[tuple[str, int], int] = {}

    def _pack(self, t: "torch.Tensor") -> "torch.Tensor":
        key = _storage_key(t)
        if key not in self.exclude:
            self.storages[key] = t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> "SavedTensorCounter":
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


@dataclass
class StepBytes:
    """Bytes of one training step, by kind (counted on CPU or read from the CUDA allocator)."""

    params: int
    grads: int
    optimizer: int
    saved_activations: int
    logits: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.pop("extra")
        return d


def optimizer_state_bytes(optimizer: "torch.optim.Optimizer") -> int:
    """Bytes of every tensor in ``optimizer.state`` (Adam: ``exp_avg``, ``exp_avg_sq`` and a scalar ``step``)."""
    import torch

    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def count_step_bytes_cpu(model: "torch.nn.Module", batch: dict, optimizer: "torch.optim.Optimizer") -> StepBytes:
    """Run one forward/backward/optimizer step and count bytes of params, grads, optimizer states and saved
    activations (via ``SavedTensorCounter``) plus the returned logits. Gradients are kept (not zeroed)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with SavedTensorCounter(model) as counter:
        out = model(**batch)
    logits_bytes = tensor_bytes([out.logits])
    out.loss.backward()
    optimizer.step()
    params = list(model.parameters())
    return StepBytes(
        params=tensor_bytes(params),
        grads=tensor_bytes(p.grad for p in params),
        optimizer=optimizer_state_bytes(optimizer),
        saved_activations=counter.nbytes,
        logits=logits_bytes,
        extra={"loss": float(out.loss.detach())},
    )


def measure_step_bytes_cuda(model: "torch.nn.Module", batch: dict, optimizer: "torch.optim.Optimizer") -> StepBytes:
    """On a CUDA GPU: model-state bytes from ``torch.cuda.memory_allocated`` after a step, activation bytes as
    the peak of ``torch.cuda.max_memory_allocated`` during the forward pass above what was allocated before
    it (the second step, when optimizer states exist and gradients were freed by ``zero_grad``)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("measure_step_bytes_cuda needs a CUDA GPU; use count_step_bytes_cpu on a CPU")
    model.train()
    batch = {k: v.cuda() for k, v in batch.items()}
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = model(**batch)
        torch.cuda.synchronize()
        forward_peak = torch.cuda.max_memory_allocated() - base
        out.loss.backward()
        optimizer.step()
        loss = float(out.loss.detach())
        del out
    torch.cuda.synchronize()
    states = torch.cuda.memory_allocated()
    params = tensor_bytes(model.parameters())
    grads = tensor_bytes(p.grad for p in model.parameters())
    return StepBytes(
        params=params,
        grads=grads,
        optimizer=states - params - grads,
        saved_activations=forward_peak,  # includes the logits and transient buffers of the forward pass
        logits=0,
        extra={"loss": loss, "allocated_after_step": states, "forward_peak": forward_peak},
    )


def predict_step_bytes(model: "torch.nn.Module", seq_len: int, batch: int, attention: str = "sdpa") -> StepBytes:
    """Prediction for ``count_step_bytes_cpu`` / ``measure_step_bytes_cuda`` with fp32 weights and
    ``torch.optim.AdamW``: 4 + 4 + 8 bytes/param (+ one 4-byte ``step`` tensor per parameter tensor) and
    ``activation_bytes`` (checkpointing follows ``model.is_gradient_checkpointing``)."""
    total, _ = ds_count_params(model)
    n_tensors = len({p.data_ptr() for p in model.parameters() if p.requires_grad})
    e = next(model.parameters()).element_size()
    acts = activation_bytes(
        model.config,
        seq_len,
        batch,
        dtype_bytes=e,
        attention=attention,
        checkpointing=bool(
            getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False))
        ),
    )
    return StepBytes(
        params=total * e,
        grads=total * e,
        optimizer=total * 2 * e + 4 * n_tensors,
        saved_activations=acts.saved,
        logits=acts.logits,
    )


# ---------------------------------------------------------------------------------------------------------
# 5. The calculator: per-GPU memory by kind, fits or not, as a bar chart (with or without widgets)
# ---------------------------------------------------------------------------------------------------------

#: GPU memory in GiB (what ``nvidia-smi`` calls 24576MiB is a "24 GB" card).
GPUS: dict[str, float] = {
    "T4 16GB": 15.0,
    "RTX 4090 24GB": 24.0,
    "A100 40GB": 40.0,
    "A100/H100 80GB": 80.0,
    "H200 141GB": 141.0,
}


@dataclass(frozen=True)
class TrainingMemory:
    """Per-GPU bytes of a training setup, by kind, and the DeepSpeed estimator's model-state figure."""

    setup: dict[str, Any]
    params: int
    grads: int
    optimizer: int
    activations: int
    buffers: int
    cpu: int
    deepspeed_gpu: int | None

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers

    def kinds(self) -> dict[str, int]:
        return {
            "params": self.params,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "buffers": self.buffers,
            "activations": self.activations,
        }

    def fits(self, gpu_gib: float) -> bool:
        return self.total <= gpu_gib * GIB


def estimate_training_memory(
    model: "str | int" = "Qwen2.5-1.5B",
    num_gpus: int = 8,
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    batch: int = 1,
    seq_len: int = 2048,
    checkpointing: bool = True,
    num_nodes: int = 1,
    attention: str = "sdpa",
    dtype_bytes: int = 2,
) -> TrainingMemory:
    """Per-GPU memory of mixed-precision AdamW training with ZeRO ``stage`` on ``num_gpus`` GPUs per node.

    ``model`` is an ``ARCHITECTURES`` name or a parameter count (then activations are left at 0: the shape is
    unknown). Model states follow the ZeRO paper (``zero_model_states``); ZeRO-3 adds DeepSpeed's buffer
    of 4 bytes × the largest layer; activations follow ``activation_bytes`` for ``batch`` sequences per GPU.
    ``deepspeed_gpu`` is DeepSpeed's own model-state estimate (stages 2 and 3; None for 0 and 1).
    """
    if isinstance(model, str):
        total, largest = architecture_params(model)
        acts = activation_bytes(model, seq_len, batch, dtype_bytes, attention, checkpointing).peak
    else:
        total, largest, acts = int(model), 0, 0
    n = num_gpus * num_nodes
    states = zero_model_states(total, stage, n, offload_optimizer=offload_optimizer, offload_param=offload_param)
    buffers = 4 * largest if stage == 3 else 0
    ds_gpu = None
    if stage == 2:
        ds_gpu = ds_zero2_estimate(total, num_gpus, num_nodes, cpu_offload=offload_optimizer)[1]
    elif stage == 3 and (offload_optimizer or not offload_param):
        ds_gpu = ds_zero3_estimate(
            total, largest, num_gpus, num_nodes, cpu_offload=offload_optimizer, cpu_offload_params=offload_param
        )[1]
    setup = dict(
        model=model,
        params=total,
        num_gpus=num_gpus,
        num_nodes=num_nodes,
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_param=offload_param,
        batch=batch,
        seq_len=seq_len,
        checkpointing=checkpointing,
    )
    return TrainingMemory(setup, states.params, states.grads, states.optimizer, acts, buffers, states.cpu, ds_gpu)


KIND_COLORS: dict[str, str] = {
    "params": "#4c72b0",
    "grads": "#dd8452",
    "optimizer": "#55a868",
    "buffers": "#8172b3",
    "activations": "#c44e52",
}


def plot_training_memory(
    estimates: "TrainingMemory | list[TrainingMemory]",
    gpu_gib: float = 24.0,
    labels: list[str] | None = None,
    title: str | None = None,
) -> "matplotlib.figure.Figure":
    """Stacked bars of per-GPU GiB by kind, a dashed line at the GPU's capacity, DeepSpeed's model-state
    estimate as a black tick, and "fits"/"OOM" above each bar. Usable directly (nbval, slides) or by widgets."""
    import matplotlib.pyplot as plt

    items = [estimates] if isinstance(estimates, TrainingMemory) else list(estimates)
    if labels is None:
        labels = [f"ZeRO-{m.setup['stage']}" + (" +off" if m.setup["offload_optimizer"] else "") for m in items]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(items) + 2), 3.6))
    for x, m in enumerate(items):
        bottom = 0.0
        for kind, value in m.kinds().items():
            gib = value / GIB
            ax.bar(x, gib, bottom=bottom, color=KIND_COLORS[kind], label=kind if x == 0 else None, width=0.6)
            bottom += gib
        if m.deepspeed_gpu is not None:
            ax.plot(
                [x - 0.3, x + 0.3],
                [m.deepspeed_gpu / GIB] * 2,
                color="black",
                lw=2,
                label="DeepSpeed model states" if x == 0 else None,
            )
        ax.text(
            x, bottom, ("fits" if m.fits(gpu_gib) else "OOM") + f"\n{bottom:.1f}", ha="center", va="bottom", fontsize=8
        )
    ax.axhline(gpu_gib, color="gray", ls="--", lw=1, label=f"GPU {gpu_gib:g} GiB")
    ax.set_xticks(range(len(items)), labels, fontsize=8)
    ax.set_ylabel("GiB per GPU")
    top = max(max(m.total for m in items) / GIB, gpu_gib)
    ax.set_ylim(0, top * 1.25)
    ax.set_title(title or f"{items[0].setup['model']}: per-GPU training memory")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def memory_calculator_widget(gpu_gib: float = 24.0) -> Any:
    """An ipywidgets calculator around ``estimate_training_memory`` + ``plot_training_memory``.

    The parameter count (in billions, typed exactly, e.g. 7 or 0.494) is used only when "param count" is chosen and
    is disabled otherwise. The returned box has ``estimate()`` (the current :class:`TrainingMemory`) and
    ``controls`` (name -> widget) for tests and for driving it from code.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    style = {"description_width": "120px"}
    layout = widgets.Layout(width="340px")
    model = widgets.Dropdown(
        options=[*ARCHITECTURES, "param count"], value="Qwen2.5-1.5B", description="model", style=style, layout=layout
    )
    count = widgets.BoundedFloatText(
        value=7.0,
        min=0.001,
        max=10_000.0,
        step=0.1,
        description="params (billions)",
        disabled=True,
        style=style,
        layout=layout,
    )
    gpus = widgets.IntSlider(value=8, min=1, max=64, description="GPUs/node", style=style, layout=layout)
    nodes = widgets.IntSlider(value=1, min=1, max=16, description="nodes", style=style, layout=layout)
    stage = widgets.ToggleButtons(
        options=[0, 1, 2, 3], value=2, description="ZeRO stage", style={**style, "button_width": "46px"}, layout=layout
    )
    off_opt = widgets.Checkbox(value=False, description="offload optimizer", style=style, layout=layout)
    off_par = widgets.Checkbox(value=False, description="offload params", style=style, layout=layout)
    batch = widgets.IntSlider(value=1, min=1, max=64, description="batch/GPU", style=style, layout=layout)
    seq = widgets.IntSlider(value=2048, min=128, max=32768, step=128, description="seq len", style=style, layout=layout)
    ckpt = widgets.Checkbox(value=True, description="checkpointing", style=style, layout=layout)
    gpu = widgets.Dropdown(
        options=GPUS, value=gpu_gib if gpu_gib in GPUS.values() else 24.0, description="GPU", style=style, layout=layout
    )
    out = widgets.Output()

    def estimate() -> TrainingMemory:
        chosen = round(count.value * 1e9) if model.value == "param count" else model.value
        return estimate_training_memory(
            chosen,
            gpus.value,
            stage.value,
            off_opt.value and stage.value > 0,
            off_par.value and stage.value == 3,
            batch.value,
            seq.value,
            ckpt.value,
            nodes.value,
        )

    def redraw(*_: Any) -> None:
        count.disabled = model.value != "param count"
        with out:
            out.clear_output(wait=True)
            try:
                m = estimate()
            except ValueError as exc:
                print(exc)
                return
            plot_training_memory(m, gpu.value)
            plt.show()

    controls = {
        "model": model,
        "params": count,
        "gpus": gpus,
        "nodes": nodes,
        "stage": stage,
        "offload_optimizer": off_opt,
        "offload_params": off_par,
        "batch": batch,
        "seq_len": seq,
        "checkpointing": ckpt,
        "gpu": gpu,
    }
    for c in controls.values():
        c.observe(redraw, names="value")
    redraw()
    box = widgets.HBox([widgets.VBox(list(controls.values()), layout=widgets.Layout(width="360px")), out])
    box.estimate = estimate
    box.controls = controls
    return box


# ---------------------------------------------------------------------------------------------------------
# 6. Running DeepSpeed ZeRO in one CPU process (for the notebook's real runs)
# ---------------------------------------------------------------------------------------------------------


def zero_config(
    stage: int, offload_optimizer: bool = False, offload_param: bool = False, bucket_size: int = 2_000_000
) -> dict[str, Any]:
    """A minimal DeepSpeed config for ``TrainingArguments(deepspeed=...)``; ``"auto"`` fields are filled by
    the Trainer from its own arguments. No ``optimizer`` section: the Trainer's ``torch.optim.AdamW`` is used (the
    Trainer's DeepSpeed integration sets ``zero_allow_untested_optimizer`` itself), so DeepSpeed compiles no Adam op
    (FusedAdam / CPUAdam)."""
    check_zero_stage(stage)
    # Buckets in elements: DeepSpeed's default reduce bucket is 5e8 elements (2 GB in fp32), allocated
    # up front; for a tiny model a small bucket is enough and saves most of the run's time on a CPU.
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": bucket_size, "allgather_bucket_size": bucket_size}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def single_process_deepspeed_env(skip_shm_build: bool = True) -> dict[str, str]:
    """Set what ``deepspeed`` expects from its launcher for ONE process (rank 0 of 1, a free local port) and
    return it. Without these variables DeepSpeed looks for MPI (mpi4py).

    ``skip_shm_build``: on a CPU DeepSpeed's communication backend JIT-compiles its shared-memory all-reduce
    op (``deepspeed_shm_comm``, ~80 s the first time, then cached in ``~/.cache/torch_extensions``) when it
    initialises. One process never communicates, so we mark the op as unavailable in DeepSpeed's
    ``deepspeed.ops.__compatible_ops__`` table and it falls back to plain ``torch.distributed`` (gloo).
    """
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    values = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": os.environ.get("MASTER_PORT", str(port)),
    }
    os.environ.update(values)
    if skip_shm_build:
        import deepspeed.ops

        # The first access probes every op by compiling and linking test programs; the async_io probe's linker
        # error ("cannot find -laio") goes to file descriptor 2, which DeepSpeed fails to silence inside Jupyter.
        with _os_stderr_silenced():
            compatible = deepspeed.ops.__compatible_ops__
        compatible["deepspeed_shm_comm"] = False
    return values


@dataclass(frozen=True)
class RankPartition:
    """Elements one data-parallel rank holds in a ZeRO run (measured, not predicted)."""

    stage: int
    rank: int
    psi: int  #: parameters of the whole model
    params: int  #: model-weight elements this rank stores between steps (ZeRO-3: its shard ``ds_tensor``)
    grads: int  #: gradient elements held between two micro-steps of gradient accumulation
    master: int  #: elements of this rank's fp32 master-weight partition (kept even in fp32 training)
    optimizer: int  #: Adam moment elements (``exp_avg`` + ``exp_avg_sq``) in this rank's optimizer
    largest: int  #: elements of the largest single parameter tensor (ZeRO-2 assigns whole tensors' gradients)
    tensors: int  #: parameter tensors (each may add padding so that N divides the shards)


def _numel(tensors: Iterable[Any]) -> int:
    return sum(t.numel() for t in tensors if t is not None)


def _zero_partition_worker(
    rank: int, world_size: int, port: int, config: Any, stages: tuple[int, ...], seed: int, queue: Any
) -> None:
    """One rank of ``measure_zero_partitions`` (a module-level function so that ``spawn`` can import it)."""
    import os

    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DS_ACCELERATOR": "cpu",
        }
    )
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # DeepSpeed's banners and warnings; an exception still reaches the parent
    os.dup2(devnull, 2)
    import deepspeed
    import deepspeed.ops
    import torch
    from transformers import AutoModelForCausalLM

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # plain gloo, no 80 s op build
    for stage in stages:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        psi = _numel(model.parameters())
        largest = max(p.numel() for p in model.parameters())
        tensors = len(list(model.parameters()))
        ds_config = {
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 2,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "zero_optimization": {
                "stage": stage,
                "reduce_bucket_size": 10**6,
                "allgather_bucket_size": 10**6,
                # ZeRO-3 keeps parameters under 1e5 elements whole on every rank
                # by default; 0 partitions every tensor
                "stage3_param_persistence_threshold": 0,
            },
        }
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds_config
        )
        ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed + rank))
        engine.backward(engine(input_ids=ids, labels=ids).loss)  # micro-step 1 of 2: gradients are accumulated
        if stage == 1:
            grads = _numel(p.grad for p in model.parameters())  # full gradients until the accumulation boundary
        elif stage == 2:
            # DeepSpeed 0.19.8 accumulates the reduced gradients of the whole tensors overlapping this rank's shard
            grads = _numel(optimizer.all_grad_tensors[0])
        else:
            grads = optimizer.grad_partitions_flat_buffer.numel()
        engine.step()
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()  # boundary: the optimizer has stepped, its states exist
        if stage < 3:
            params = _numel(p.data for p in model.parameters())
            master = _numel(optimizer.single_partition_of_fp32_groups)
        else:
            params = _numel(p.ds_tensor for p in model.parameters())
            master = _numel(optimizer.fp32_partitioned_groups_flat)
        moments = sum(
            t.numel()
            for state in optimizer.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t) and t.dim() > 0
        )  # not the scalar ``step``
        queue.put(RankPartition(stage, rank, psi, params, grads, master, moments, largest, tensors))
        engine.destroy()
        del engine, optimizer, model
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def measure_zero_partitions(
    config: Any, stages: tuple[int, ...] = (1, 2, 3), world_size: int = 2, seed: int = 0
) -> list[RankPartition]:
    """Run DeepSpeed ZeRO with ``world_size`` CPU processes (gloo) on a fresh model built from ``config`` and
    return what each rank holds, sorted by (stage, rank).

    Each stage trains one optimizer step of two accumulated micro-batches per rank with the Trainer's default
    optimizer (``torch.optim.AdamW``, fp32); the gradient count is taken between the micro-steps, where
    ZeRO-1 still keeps the full gradients, ZeRO-2 the whole tensors overlapping its shard and ZeRO-3 its flat shard."""
    import socket

    import torch.multiprocessing as mp

    for stage in stages:
        check_zero_stage(stage)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        _zero_partition_worker,
        args=(world_size, port, config, tuple(stages), seed, queue),
        nprocs=world_size,
        start_method="spawn",
    )
    rows = [queue.get() for _ in range(world_size * len(stages))]
    return sorted(rows, key=lambda r: (r.stage, r.rank))


@contextmanager
def _os_stderr_silenced():
    """Send file descriptor 2 (what child processes such as a C compiler write to) to /dev/null for a moment."""
    import os
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------------------------------------------------
# 7. What a notebook needs on a real model (configs/notebook_profiles.json)
# ---------------------------------------------------------------------------------------------------------
PROFILES_FILE = Path(__file__).resolve().parent.parent / "configs" / "notebook_profiles.json"
#: CUDA context, cuBLAS workspaces and allocator slack, measured as ~0.5-1 GiB on current GPUs.
CUDA_OVERHEAD_BYTES = GIB


def notebook_profiles() -> dict[str, Any]:
    """The per-notebook profiles (parameters of the stand-in and GPU runs, real-model workloads)."""
    import json

    return json.loads(PROFILES_FILE.read_text(encoding="utf-8"))["notebooks"]


def notebook_need(notebook: str, config: Any, device_type: str = "cuda") -> int:
    """Predicted peak bytes of ``notebook`` (e.g. ``"06_sft_masking"``) on a model with ``config``.

    Weights are fp32 (the workbook keeps fp32 master weights): ``4 · P`` per copy alive; the trained fraction adds
    fp32 gradients and AdamW's two moments (``12 · P``). On CUDA, autocast's 16-bit weight copies (``2 · P``), the
    activations of the heaviest forward/backward in 16 bits (:func:`activation_bytes`, no checkpointing, the LM
    head's logits included, so a reward model is over-estimated) and :data:`CUDA_OVERHEAD_BYTES`; on CPU the same
    activations in fp32 and no overhead. 0 for a notebook that loads no model.
    """
    from course_utils.models import count_parameters_formula

    profile = notebook_profiles()[notebook]
    work = profile["workload"]
    if not profile["uses_model"]:
        return 0
    cuda = device_type == "cuda"
    params = count_parameters_formula(config)
    weights = 4 * params * (1 + work["extra_copies"])
    trained = int(work["trained_fraction"] * params) * (12 + (2 if cuda else 0))
    acts = activation_bytes(config, work["seq_len"], work["batch"], dtype_bytes=2 if cuda else 4).peak
    return weights + trained + acts + (CUDA_OVERHEAD_BYTES if cuda else 0)


def check_fits(notebook: str, config: Any, device: "torch.device | str") -> int:
    """Refuse, with one sentence, to run ``notebook`` where ``device`` cannot hold its predicted need.

    On CUDA the free memory (``torch.cuda.mem_get_info``) is compared with :func:`notebook_need`; on CPU the
    available RAM (psutil). Returns the predicted bytes.
    """
    import torch

    device = torch.device(device)
    need = notebook_need(notebook, config, device_type=device.type)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"GPU {torch.cuda.get_device_name(device)} has {free / GIB:.1f} GiB free"
    else:
        import psutil

        free = psutil.virtual_memory().available
        where = f"this machine has {free / GIB:.1f} GiB of RAM available"
    if need > free:
        raise MemoryError(
            f"{notebook} needs about {need / GIB:.1f} GiB for this model but {where}: choose a smaller "
            "MODEL, a larger GPU, or lower BATCH_SIZE / MAX_LENGTH in the parameters cell."
        )
    return need
