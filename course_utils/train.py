"""Pretraining: a hand-written training loop that reproduces ``Trainer``, perplexity, activation memory, metadata.

``train_loop`` does by hand what ``transformers.Trainer`` does for a causal LM: the same data order
(``torch.randperm`` seeded like Trainer's sampler), AdamW with weight decay on everything but biases and norms,
a linear warm-up then cosine decay, gradient accumulation normalised by the number of label tokens in the whole
accumulation window, ``torch.autocast`` on GPUs, and gradient clipping. Same seed and data give the same losses.

``write_metadata`` writes the ``metadata.json`` saved next to every model this workbook produces (data
fingerprint, git commit, arguments, library versions).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils import PROJECT_ROOT

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    import torch

#: Libraries whose versions go into metadata files.
VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "accelerate",
    "deepspeed",
    "peft",
    "trl",
    "safetensors",
)


# --------------------------------------------------------------------------------------------------------------
# Learning-rate schedule and optimizer
# --------------------------------------------------------------------------------------------------------------
def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up ``step / warmup_steps`` for the first ``warmup_steps`` steps, then half a cosine from 1 down to
    ``min_lr_ratio`` at ``total_steps``; the same numbers as ``transformers.get_cosine_schedule_with_warmup``
    when ``min_lr_ratio == 0``. Note that step 0 has multiplier 0 when there is a warm-up.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def decay_parameter_names(model: "torch.nn.Module") -> set[str]:
    """Names of the parameters that get weight decay: everything except biases and normalisation weights.

    This is the rule of ``Trainer.get_decay_parameter_names`` (names containing ``bias`` or a ``norm`` part).
    """
    import re

    forbidden = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")
    return {name for name, _ in model.named_parameters() if not forbidden.search(name.lower())}


def build_optimizer(
    model: "torch.nn.Module",
    learning_rate: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = True,
) -> "torch.optim.AdamW":
    """AdamW with two parameter groups (decay / no decay), as ``Trainer`` builds it (``optim="adamw_torch_fused"``)."""
    import torch

    decay = decay_parameter_names(model)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in params if name in decay], "weight_decay": weight_decay},
        {"params": [p for name, p in params if name not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)


def train_order(num_examples: int, seed: int, epoch: int = 0) -> list[int]:
    """The order in which ``Trainer`` visits a map-style dataset: ``randperm`` seeded with ``seed + epoch``."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def iter_batches(
    dataset: "Sequence[Mapping[str, Any]] | datasets.Dataset", batch_size: int, seed: int, shuffle: bool = True
) -> Iterable[dict[str, "torch.Tensor"]]:
    """Endless stream of batches (dicts of stacked tensors), epoch after epoch, in Trainer's order.

    The last incomplete batch of an epoch is kept, as in ``Trainer`` (``dataloader_drop_last=False``).
    """
    import torch

    epoch = 0
    columns = ("input_ids", "attention_mask", "labels")
    while True:
        order = train_order(len(dataset), seed, epoch) if shuffle else list(range(len(dataset)))
        for start in range(0, len(order), batch_size):
            rows = [dataset[i] for i in order[start : start + batch_size]]
            yield {key: torch.tensor([row[key] for row in rows], dtype=torch.long) for key in columns if key in rows[0]}
        epoch += 1


# --------------------------------------------------------------------------------------------------------------
# The hand-written training loop
# --------------------------------------------------------------------------------------------------------------
def train_step(
    model: "torch.nn.Module",
    window: "Sequence[Mapping[str, torch.Tensor]]",
    optimizer: "torch.optim.Optimizer",
    scheduler: "torch.optim.lr_scheduler.LRScheduler",
    max_grad_norm: float | None = 1.0,
    autocast_dtype: "torch.dtype | None" = None,
    scaler: "torch.amp.GradScaler | None" = None,
) -> tuple[float, float]:
    """One optimizer step over the micro-batches of one accumulation window; returns (loss, grad norm before clipping)."""
    import torch

    from course_utils.loss import causal_lm_loss, count_target_tokens

    device = next(model.parameters()).device
    n_items = sum(count_target_tokens(batch["labels"]) for batch in window)  # label tokens of the whole window
    step_loss = 0.0
    for batch in window:
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        loss = causal_lm_loss(logits, batch["labels"], num_items_in_batch=n_items)  # summed, / tokens of the window
        (scaler.scale(loss) if scaler is not None else loss).backward()  # fp16: scaled so small gradients survive
        step_loss += loss.item()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def train_loop(
    model: "torch.nn.Module",
    dataset: "datasets.Dataset",
    *,
    max_steps: int,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    device: "torch.device | str | None" = None,
    autocast_dtype: "torch.dtype | None" = None,
    logging_steps: int = 1,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``max_steps`` optimizer steps and return the log: one dict per ``logging_steps``.

    Each optimizer step consumes ``gradient_accumulation_steps`` micro-batches of ``batch_size`` blocks. Their
    token losses are summed and divided by the number of label tokens of the whole window, so the gradient is
    that of one big batch even when micro-batches hold different numbers of tokens (dividing each micro-batch
    mean by ``gradient_accumulation_steps`` is only right when they all hold the same number). Then the gradient
    norm is clipped to ``max_grad_norm``, AdamW steps, and the cosine schedule moves on.

    ``autocast_dtype`` (``torch.bfloat16`` or ``torch.float16``, from :func:`course_utils.env.pick_precision`) runs
    the forward pass under ``torch.autocast`` on the model's device; the trainable weights and the optimizer stay
    in fp32 (mixed precision: fp32 master weights; a model whose trainable weights are not fp32 is refused, since
    AdamW updates smaller than a bf16 step are lost). fp16 also uses a ``torch.amp.GradScaler``: the loss is
    multiplied before ``backward`` so small gradients do not underflow, the gradients are unscaled *before*
    clipping, and a step whose gradients overflowed is skipped (as ``Trainer(fp16=True)`` does).
    Logged entries: ``step``, ``loss`` (mean over the logging interval, like Trainer), ``learning_rate``
    (the rate used by the last step of the interval), ``grad_norm`` (before clipping), ``tokens``, ``seconds``.
    """
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    model.train()
    if autocast_dtype is not None:
        low = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
        if low:
            raise ValueError(
                f"mixed precision keeps fp32 master weights, but trainable weights are {low}: load the "
                "model in fp32 (models.load_model_and_tokenizer does) and let autocast cast the matmuls"
            )
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    optimizer = build_optimizer(model, learning_rate, weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup_steps, max_steps)
    )
    batches = iter(iter_batches(dataset, batch_size, seed))
    history: list[dict[str, float]] = []
    interval_loss, tokens_seen, started = 0.0, 0, time.perf_counter()
    for step in range(1, max_steps + 1):
        window = [next(batches) for _ in range(gradient_accumulation_steps)]
        used_lr = scheduler.get_last_lr()[0]
        step_loss, grad_norm = train_step(model, window, optimizer, scheduler, max_grad_norm, autocast_dtype, scaler)
        tokens_seen += sum(batch["input_ids"].numel() for batch in window)
        interval_loss += step_loss
        if step % logging_steps == 0 or step == max_steps:
            n_steps = logging_steps if step % logging_steps == 0 else step % logging_steps
            entry = {
                "step": step,
                "loss": interval_loss / n_steps,
                "learning_rate": used_lr,
                "grad_norm": grad_norm,
                "tokens": tokens_seen,
                "seconds": time.perf_counter() - started,
            }
            history.append(entry)
            interval_loss = 0.0
            if callback is not None:
                callback(entry)
    return history


def log_history(trainer: Any, key: str = "loss") -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one logged metric of a trained ``Trainer`` or TRL trainer, from
    ``trainer.state.log_history`` (``"loss"``: the training entries; e.g. ``"eval_loss"``, ``"rewards/margins"``)."""
    return [(int(entry["step"]), float(entry[key])) for entry in trainer.state.log_history if key in entry]


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
def dataset_perplexity(
    model: "torch.nn.Module",
    dataset: "datasets.Dataset",
    batch_size: int = 16,
    device: "torch.device | str | None" = None,
) -> tuple[float, float]:
    """Token-weighted mean cross-entropy (nats) of ``model`` on packed ``dataset``, and its perplexity.

    Sums token losses over all blocks and divides by the total token count (not a mean of batch means);
    the perplexity is :func:`course_utils.loss.perplexity` of that mean.
    """
    import torch

    from course_utils.loss import causal_lm_loss, count_target_tokens, perplexity

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batched(dataset, batch_size):
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            total += float(causal_lm_loss(logits, batch["labels"].to(device), reduction="sum"))
            count += count_target_tokens(batch["labels"])
    model.train(was_training)
    if count == 0:
        raise ValueError("dataset_perplexity: the dataset has no label tokens")
    mean = total / count
    return mean, perplexity(mean)


def _batched(dataset: "datasets.Dataset", batch_size: int) -> Iterable[dict[str, "torch.Tensor"]]:
    import torch

    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        yield {key: torch.tensor(rows[key], dtype=torch.long) for key in ("input_ids", "labels")}


# --------------------------------------------------------------------------------------------------------------
# Activation memory
# --------------------------------------------------------------------------------------------------------------
def saved_activation_bytes(model: "torch.nn.Module", input_ids: "torch.Tensor") -> tuple[int, "torch.Tensor"]:
    """Bytes of tensors autograd keeps for the backward pass during one forward (and the loss, for backward).

    Counted by :class:`course_utils.memory.SavedTensorCounter` (``saved_tensors_hooks`` at the outermost level), so
    with gradient checkpointing the activations inside a checkpointed layer are not kept (only the layer inputs
    are). Parameters saved by reference (weights used in matmuls) are not counted: only non-parameter tensors.
    """
    from course_utils.loss import causal_lm_loss
    from course_utils.memory import SavedTensorCounter

    with SavedTensorCounter(model) as saved:
        logits = model(input_ids=input_ids).logits
        loss = causal_lm_loss(logits, input_ids)
    return saved.nbytes, loss


# --------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the data fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inputs_sha256(names: Iterable[str]) -> dict[str, str]:
    """``{name: SHA-256}`` of project files (paths relative to the project root): a committed record's fingerprint
    of what it was made from."""
    return {name: file_sha256(PROJECT_ROOT / name) for name in names}


def stale_inputs(record: Mapping[str, Any]) -> list[str]:
    """The files of ``record["inputs_sha256"]`` that changed since the record was made (empty: the record is current)."""
    now = inputs_sha256(record["inputs_sha256"])
    return [name for name, digest in record["inputs_sha256"].items() if now[name] != digest]


def git_commit(repo: str | Path = PROJECT_ROOT) -> str | None:
    """The current git commit of ``repo`` with ``-dirty`` when the tree has uncommitted changes, or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def library_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (missing ones are left out) plus Python's."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return path.name


def write_metadata(
    out_dir: str | Path,
    arguments: Mapping[str, Any] | Any,
    data_files: Sequence[str | Path] | str | Path = (),
    extra: Mapping[str, Any] | None = None,
    filename: str = "metadata.json",
) -> Path:
    """Write ``out_dir/metadata.json`` describing how a saved model was made; return its path.

    Contents: ``arguments`` (a dict, a dataclass or ``TrainingArguments``; anything not JSON becomes a string),
    ``data`` (for each data file: path relative to the repo, bytes, SHA-256), ``git_commit`` (``-dirty`` when
    the tree has uncommitted changes), ``versions`` of the libraries, and any ``extra`` fields (losses,
    metrics). No timestamps, so the same run writes the same file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]
    data = []
    for file in data_files:
        file = Path(file)
        data.append({"path": _relative(file), "bytes": file.stat().st_size, "sha256": file_sha256(file)})
    metadata: dict[str, Any] = {
        "arguments": _jsonable(arguments),
        "data": data,
        "git_commit": git_commit(),
        "versions": library_versions(),
    }
    if extra:
        metadata.update(_jsonable(dict(extra)))
    path = out / filename
    path.write_text(json.dumps(metadata, indent=1, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return path
