"""Fine-tuning methods side by side (notebook 07's comparison and ``scripts/bench_peft.py``).

* :func:`prepare_method` builds full fine-tuning, LoRA, prefix tuning, prompt tuning, IA3 (all through PEFT)
  and a bottleneck adapter (:class:`BottleneckAdapter`, from scratch: PEFT 0.21 has no Houlsby adapter);
* :func:`train_and_measure` trains a few steps and measures trainable parameters, optimizer-state bytes,
  gradient bytes, saved-activation bytes, seconds per step and held-out loss (:class:`MethodResult`);
  :func:`format_table` prints the comparison.

LoRA itself, from scratch and checked against PEFT, is :mod:`course_utils.lora`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from course_utils.collate import causal_lm_collate
from course_utils.lora import count_trainable
from course_utils.loss import IGNORE_INDEX
from course_utils.memory import SavedTensorCounter, optimizer_state_bytes, tensor_bytes

#: The methods :func:`prepare_method` knows, in the order of the comparison table.
METHODS: tuple[str, ...] = ("full", "lora", "lora-all", "adapter", "prefix", "prompt", "ia3")


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
    "full": 1e-3,
    "lora": 1e-2,
    "lora-all": 1e-2,
    "adapter": 1e-2,
    "prefix": 3e-2,
    "prompt": 3e-2,
    "ia3": 3e-2,
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
    tokens, which a base model pretrained on plain text has never seen (see :func:`course_utils.tokenizer.chat_token_ids`).
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
            task_type=TaskType.CAUSAL_LM,
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=["q_proj", "v_proj"],
            trainable_token_indices=tokens,
        ),
        "lora-all": lambda: LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules="all-linear",
            trainable_token_indices=tokens,
        ),
        "prefix": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens),
        "prompt": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens),
        "ia3": lambda: IA3Config(task_type=TaskType.CAUSAL_LM),
    }
    if method not in configs:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    return get_peft_model(model, configs[method]())


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
    scheduler = (
        get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
        if schedule == "cosine"
        else get_constant_schedule_with_warmup(optimizer, warmup_steps)
    )
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
