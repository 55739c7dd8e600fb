"""LoRA from scratch, checked against PEFT, and a measured comparison of fine-tuning methods.

* :class:`LoRALinear` computes ``W0 x + (alpha / r) * B A dropout(x)`` with ``W0`` frozen, ``A`` (r x in)
  Kaiming-initialised and ``B`` (out x r) zero-initialised, so the wrapped model starts equal to the base.
* :func:`inject_lora` swaps named ``nn.Linear`` modules (``q_proj``, ``v_proj``) for ``LoRALinear`` and
  freezes everything else; :func:`copy_lora_to_peft` copies our ``A``/``B`` into a PEFT LoRA model so the
  outputs can be compared (:func:`max_logit_diff`).
* :func:`lora_param_formula` counts LoRA parameters per target module: ``r * (in + out)`` (the seeds'
  ``2 * L * d_model * r`` only holds when every target is square, which ``v_proj`` is not under GQA).
* :func:`prepare_method` builds full fine-tuning, LoRA, prefix tuning, prompt tuning, IA3 (all through PEFT)
  and a bottleneck adapter (:class:`BottleneckAdapter`, from scratch: PEFT 0.21 has no Houlsby adapter);
  :func:`train_and_measure` trains a few steps and measures trainable parameters, optimizer-state bytes,
  gradient bytes, saved-activation bytes, seconds per step, held-out loss.
* :func:`nf4_codebook`, :func:`nf4_quantize`, :func:`quantized_weight_bytes`: the QLoRA NF4 arithmetic on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from course_utils.collate import causal_lm_collate
from course_utils.loss import IGNORE_INDEX
from course_utils.memory import SavedTensorCounter, optimizer_state_bytes, tensor_bytes

#: The methods :func:`prepare_method` knows, in the order of the comparison table.
METHODS: tuple[str, ...] = ("full", "lora", "lora-all", "adapter", "prefix", "prompt", "ia3")

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
    model: nn.Module, target_modules: Sequence[str] = ("q_proj", "v_proj"), r: int = 8, alpha: float = 16,
    dropout: float = 0.0,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with a target by a ``LoRALinear``; freeze the rest.

    Returns the replaced module names. Raises ``ValueError`` if no module matched (a typo in
    ``target_modules`` would otherwise train nothing at all).
    """
    model.requires_grad_(False)  # everything frozen: only the new A and B train
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
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
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }
    unknown = set(target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"lora_param_formula: unknown target modules {sorted(unknown)}")
    return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in target_modules)


# --------------------------------------------------------------------------------------------------------------
# Bottleneck adapter (Houlsby-style, after the MLP as the seeds describe), from scratch
# --------------------------------------------------------------------------------------------------------------
class BottleneckAdapter(nn.Module):
    """Wrap a block's MLP: ``y = mlp(x); y + up(act(down(y)))`` with ``up`` zero-initialised (identity at start).

    Shapes: ``down`` (bottleneck, h) + bias, ``up`` (h, bottleneck) + bias. Unlike LoRA it cannot be merged into
    the base weights (the non-linearity sits in between), so it adds latency at inference.
    """

    def __init__(self, mlp: nn.Module, hidden_size: int, bottleneck: int = 16) -> None:
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.act = nn.SiLU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.up(self.act(self.down(y)))


def add_bottleneck_adapters(model: nn.Module, bottleneck: int = 16, module_name: str = "mlp") -> int:
    """Wrap every decoder block's ``mlp`` in a :class:`BottleneckAdapter`, freeze the rest; return the count."""
    model.requires_grad_(False)
    hidden = model.config.hidden_size
    names = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == module_name]
    if not names:
        raise ValueError(f"add_bottleneck_adapters: no module named {module_name!r}")
    dtype = next(model.parameters()).dtype
    for name in names:
        model.set_submodule(name, BottleneckAdapter(model.get_submodule(name), hidden, bottleneck).to(dtype))
    return len(names)


# --------------------------------------------------------------------------------------------------------------
# Methods and measurement
# --------------------------------------------------------------------------------------------------------------
#: Per-method defaults used by the notebook and ``scripts/bench_peft.py``; parameter-efficient methods
#: train few parameters from a zero/identity start and want a larger learning rate than full fine-tuning.
DEFAULT_LR: dict[str, float] = {
    "full": 1e-3, "lora": 1e-2, "lora-all": 1e-2, "adapter": 1e-2, "prefix": 3e-2, "prompt": 3e-2, "ia3": 3e-2,
}


def prepare_method(
    method: str,
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    num_virtual_tokens: int = 8,
    bottleneck: int = 16,
    trainable_tokens: Sequence[int] = (),
) -> nn.Module:
    """Return ``model`` set up for ``method`` (one of :data:`METHODS`); PEFT methods return a ``PeftModel``.

    ``trainable_tokens`` (LoRA methods only) also trains those rows of the embedding (PEFT's
    ``trainable_token_indices``; with tied embeddings the LM head's rows follow): for the chat template's special
    tokens, which a base model pretrained on plain text has never seen (see :func:`chat_token_ids`).
    """
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    tokens = list(trainable_tokens) or None
    if tokens and method not in ("lora", "lora-all"):
        raise ValueError(f"trainable_tokens is a LoRA option; {method!r} does not take it")
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method == "adapter":
        add_bottleneck_adapters(model, bottleneck)
        return model
    configs: dict[str, Callable[[], Any]] = {
        "lora": lambda: LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
            target_modules=["q_proj", "v_proj"], trainable_token_indices=tokens,
        ),
        "lora-all": lambda: LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
            target_modules="all-linear", trainable_token_indices=tokens,
        ),
        "prefix": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens),
        "prompt": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens),
        "ia3": lambda: IA3Config(task_type=TaskType.CAUSAL_LM),
    }
    if method not in configs:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    return get_peft_model(model, configs[method]())


def chat_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the ChatML control tokens (``<|im_start|>``, ``<|im_end|>``) that frame every SFT example."""
    ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    if None in ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        raise ValueError("the tokenizer has no ChatML tokens <|im_start|> / <|im_end|>")
    return ids


def make_batches(
    examples: Sequence[dict[str, Sequence[int]]], batch_size: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """Cut encoded examples into right-padded batches (``collate.causal_lm_collate``), in order (shuffle beforehand
    for training)."""
    return [causal_lm_collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def eval_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean loss over ``batches`` (labels -100 ignored)."""
    model.eval()
    total = 0.0
    count = 0
    for batch in batches:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / max(count, 1)


@dataclass
class MethodResult:
    """What :func:`train_and_measure` measured for one method."""

    method: str
    trainable_params: int
    total_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    seconds_per_step: float
    losses: list[float] = field(default_factory=list)
    eval_loss_before: float = float("nan")
    eval_loss_after: float = float("nan")
    accuracy: float | None = None
    cuda_peak_bytes: int | None = None

    @property
    def estimated_peak_bytes(self) -> int:
        """Weights + gradients + optimizer state + saved activations of one step."""
        return self.param_bytes + self.grad_bytes + self.optimizer_state_bytes + self.activation_bytes

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("losses")
        row["estimated_peak_bytes"] = self.estimated_peak_bytes
        return row


def train_and_measure(
    method: str,
    model: nn.Module,
    train_batches: Sequence[dict[str, torch.Tensor]],
    eval_batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    lr: float | None = None,
    seed: int = 0,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> tuple[nn.Module, MethodResult]:
    """Train ``model`` (already prepared by :func:`prepare_method`) with AdamW for ``steps`` steps and measure.

    Batches are cycled in order. ``schedule`` is ``"constant"`` or ``"cosine"`` (linear warm-up over
    ``warmup_steps``, then cosine decay to 0, as Trainer's ``lr_scheduler_type="cosine"``). Seconds per step exclude
    the first (warm-up) step. Memory figures are exact byte counts of tensors (device-independent); on CUDA
    ``cuda_peak_bytes`` adds the allocator's peak.
    """
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    lr = lr if lr is not None else DEFAULT_LR.get(method, 1e-3)
    trainable, total = count_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    unique_params = {id(p): p for p in model.parameters()}.values()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = (get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps) if schedule == "cosine"
                 else get_constant_schedule_with_warmup(optimizer, warmup_steps))
    before = eval_loss(model, eval_batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    losses: list[float] = []
    activation_bytes = 0
    start = time.perf_counter()
    for step in range(steps):
        if step == 1:
            start = time.perf_counter()
        batch = {k: v.to(device) for k, v in train_batches[step % len(train_batches)].items()}
        if step == 0:
            with SavedTensorCounter(model) as saved:
                loss = model(**batch).loss
            activation_bytes = saved.nbytes
        else:
            loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}: non-finite loss {float(loss)} at step {step}")
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
    seconds = (time.perf_counter() - start) / max(steps - 1, 1)
    result = MethodResult(
        method=method,
        trainable_params=trainable,
        total_params=total,
        param_bytes=tensor_bytes(unique_params),
        grad_bytes=tensor_bytes(params),
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
        activation_bytes=activation_bytes,
        seconds_per_step=seconds,
        losses=losses,
        eval_loss_before=before,
        eval_loss_after=eval_loss(model, eval_batches),
        cuda_peak_bytes=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
    )
    model.eval()
    return model, result


def format_table(results: Sequence[MethodResult], rounded: bool = True) -> str:
    """A Markdown table of results; ``rounded=True`` leaves out timings (non-deterministic) for stored outputs.
    The accuracy column appears only when some result has an accuracy."""
    with_accuracy = any(res.accuracy is not None for res in results)
    header = ["method", "trainable", "trainable %", "optimizer state", "est. peak memory", "eval loss"]
    header += ["accuracy"] if with_accuracy else []
    if not rounded:
        header.insert(5, "s/step")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        cells = [
            res.method,
            f"{res.trainable_params:,}",
            f"{100 * res.trainable_params / res.total_params:.2f}",
            f"{res.optimizer_state_bytes / 1024:.1f} KiB",
            f"{res.estimated_peak_bytes / 2**20:.2f} MiB",
            f"{res.eval_loss_before:.2f} -> {res.eval_loss_after:.2f}",
        ]
        if with_accuracy:
            cells.append("-" if res.accuracy is None else f"{res.accuracy:.3f}")
        if not rounded:
            cells.insert(5, f"{res.seconds_per_step:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], blocksize: int = 64) -> torch.Tensor:
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
