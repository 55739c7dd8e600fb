"""LoRA from scratch, checked against PEFT; the QLoRA NF4 arithmetic.

* :class:`LoRALinear` computes ``W0 x + (alpha / r) * B A dropout(x)`` with ``W0`` frozen, ``A`` (r x in)
  Kaiming-initialised and ``B`` (out x r) zero-initialised, so the wrapped model starts equal to the base.
* :func:`inject_lora` swaps named ``nn.Linear`` modules (``q_proj``, ``v_proj``) for ``LoRALinear`` and
  freezes everything else; :func:`copy_lora_to_peft` copies our ``A``/``B`` into a PEFT LoRA model so the
  outputs can be compared (:func:`max_logit_diff`).
* :func:`lora_param_formula` counts LoRA parameters per target module: ``r * (in + out)`` (the seeds'
  ``2 * L * d_model * r`` only holds when every target is square, which ``v_proj`` is not under GQA).
* The measured comparison of fine-tuning methods (full, LoRA, adapter, prefix, prompt, IA3) is
  :mod:`course_utils.peft_methods`.
* :func:`nf4_codebook`, :func:`nf4_quantize`, :func:`quantized_weight_bytes`: the QLoRA NF4 arithmetic on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

ALL_LINEAR: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------------------------------------
# LoRA from scratch
# --------------------------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """``y = base(x) + (alpha / r) * dropout(x) @ A.T @ B.T`` with ``base`` frozen.

    Shapes: ``x`` (..., in), ``A`` (r, in), ``B`` (out, r), ``y`` (..., out). ``B`` starts at zero, so the
    layer is exactly ``base`` until the first update; ``A`` gets PEFT's default Kaiming-uniform init.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got r={r}")
        self.base = base.requires_grad_(False)  # W0 stays frozen
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))  # (out, r), zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


def inject_lora(
    model: nn.Module,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with a target by a ``LoRALinear``; freeze the rest.

    Returns the replaced module names. Raises ``ValueError`` if no module matched (a typo in
    ``target_modules`` would otherwise train nothing at all).
    """
    model.requires_grad_(False)  # everything frozen: only the new A and B train
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules
    ]
    if not names:
        raise ValueError(f"inject_lora: no nn.Linear named {list(target_modules)} in {type(model).__name__}")
    for name in names:
        model.set_submodule(name, LoRALinear(model.get_submodule(name), r=r, alpha=alpha, dropout=dropout))
    return names


def is_scratch_lora(module: nn.Module) -> bool:
    """A from-scratch LoRA layer: this module's :class:`LoRALinear` or notebook 07's own copy of it.

    Recognised by its shape, not its class (a class defined in a notebook cell is a different class object):
    ``lora_A`` is a parameter here, whereas PEFT keeps a ``ModuleDict`` of adapters under that name.
    """
    return isinstance(getattr(module, "lora_A", None), nn.Parameter) and hasattr(module, "base")


def merged_linear(layer: nn.Module) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``W0 + (alpha / r) B A`` (no extra latency at inference)."""
    base = layer.base
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None).to(base.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(base.weight + layer.scaling * (layer.lora_B @ layer.lora_A))
        if base.bias is not None:
            out.bias.copy_(base.bias)
    return out


def merge_lora(model: nn.Module) -> int:
    """Replace each from-scratch LoRA layer by its merged ``nn.Linear`` in place; return how many were merged."""
    names = [name for name, module in model.named_modules() if is_scratch_lora(module)]
    for name in names:
        model.set_submodule(name, merged_linear(model.get_submodule(name)))
    return len(names)


def copy_lora_to_peft(scratch: nn.Module, peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Copy ``A``/``B`` of every :class:`LoRALinear` in ``scratch`` into the matching PEFT LoRA layer.

    PEFT stores ``lora_A[adapter].weight`` (r, in) and ``lora_B[adapter].weight`` (out, r), the same shapes as
    ours. Returns the number of layers copied; raises ``KeyError`` if a layer has no PEFT counterpart.
    """
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict)
    }
    copied = 0
    with torch.no_grad():
        for name, module in scratch.named_modules():
            if not is_scratch_lora(module):
                continue
            if name not in peft_layers:
                raise KeyError(f"copy_lora_to_peft: PEFT model has no LoRA layer {name!r}")
            target = peft_layers[name]
            target.lora_A[adapter_name].weight.copy_(module.lora_A)
            target.lora_B[adapter_name].weight.copy_(module.lora_B)
            copied += 1
    return copied


def randomize_lora_B(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Give every ``B`` of our LoRA layers random values (at init ``B = 0`` would make any comparison trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if is_scratch_lora(module):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * std)


@torch.no_grad()
def max_logit_diff(model_a: nn.Module, model_b: nn.Module, input_ids: torch.Tensor) -> float:
    """Largest absolute difference between the two models' logits on ``input_ids`` (both in eval mode)."""
    model_a.eval()
    model_b.eval()
    return float((model_a(input_ids=input_ids).logits - model_b(input_ids=input_ids).logits).abs().max())


# --------------------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------------------
def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def lora_param_formula(config: Any, target_modules: Sequence[str] = ("q_proj", "v_proj"), r: int = 8) -> int:
    """LoRA parameters of a Qwen2/Llama decoder: ``layers * sum_over_targets r * (in + out)``.

    ``q_proj``/``o_proj``: h -> h; ``k_proj``/``v_proj``: h -> kv_heads * head_dim (smaller under GQA);
    ``gate_proj``/``up_proj``: h -> intermediate; ``down_proj``: intermediate -> h.
    """
    h = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    i = config.intermediate_size
    shapes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    unknown = set(target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"lora_param_formula: unknown target modules {sorted(unknown)}")
    return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in target_modules)


# --------------------------------------------------------------------------------------------------------------
# QLoRA: NF4 arithmetic (runs on CPU; the real thing needs bitsandbytes on CUDA)
# --------------------------------------------------------------------------------------------------------------
def nf4_codebook() -> torch.Tensor:
    """The 16 NormalFloat4 levels (QLoRA): quantiles of N(0, 1), scaled to [-1, 1], with an exact zero.

    Same construction as bitsandbytes' ``create_normal_map(offset=0.9677083)``: 8 positive and 7 negative
    quantiles plus 0, so that each level is equally likely for normally distributed weights.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    offset = 0.9677083
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).to(torch.float32)


def nf4_quantize(weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise NF4: per block of ``blocksize`` values, scale by absmax and round to the nearest level.

    Returns ``(codes, absmax)``: codes (numel,) uint8 in 0..15 (4 bits each when packed), absmax (n_blocks,).
    """
    flat = weight.detach().float().reshape(-1)
    if flat.numel() % blocksize:
        raise ValueError(f"nf4_quantize: {flat.numel()} values not divisible by blocksize {blocksize}")
    blocks = flat.view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
    normalized = blocks / absmax[:, None]
    codes = (normalized[..., None] - nf4_codebook()).abs().argmin(dim=-1).to(torch.uint8)
    return codes.view(-1), absmax


def nf4_dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], blocksize: int = 64
) -> torch.Tensor:
    """Inverse of :func:`nf4_quantize` (up to rounding): ``level[code] * absmax`` per block."""
    values = nf4_codebook()[codes.long()].view(-1, blocksize) * absmax[:, None]
    return values.view(*shape)


def quantized_weight_bytes(
    n_params: int, bits: float = 4, blocksize: int = 64, double_quant: bool = True, second_blocksize: int = 256
) -> float:
    """Bytes to store ``n_params`` weights in blockwise ``bits``-bit format with absmax constants.

    Without double quantization each block of ``blocksize`` stores an fp32 absmax (32/64 = 0.5 bit/param);
    QLoRA's double quantization stores it in 8 bits plus one fp32 per ``second_blocksize`` blocks
    (8/64 + 32/(64*256) = 0.127 bit/param).
    """
    n_blocks = math.ceil(n_params / blocksize)
    constants = n_blocks * 1 + math.ceil(n_blocks / second_blocksize) * 4 if double_quant else n_blocks * 4
    return n_params * bits / 8 + constants
