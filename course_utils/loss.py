"""Loss: the causal-LM cross-entropy written out, its variants, and the pitfalls of notebook 04.

Convention (the Hugging Face one): ``labels`` has the same shape as ``input_ids`` and is *not* shifted;
the loss shifts it, so the logits at position ``t`` are scored against ``labels[t + 1]``. ``-100`` marks
positions without a target (padding, prompt).

* ``causal_lm_loss``        token mean (equal to ``model(..., labels=labels).loss``), or sum, or a sum divided by
                            ``num_items_in_batch`` (the gradient-accumulation fix), with optional label smoothing;
* ``per_token_loss``        the [B, T-1] loss matrix, 0 where there is no target;
* ``sequence_mean_loss``    every sequence weighs the same, whatever its length;
* ``weighted_causal_lm_loss`` per-example (e.g. per-task) weights;
* ``accumulate_gradients``  micro-batch loop with the naive or the token-count normalisation;
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

#: Label value ignored by ``F.cross_entropy`` (its default ``ignore_index``) and by every HF causal-LM loss: prompt
#: tokens, padding and anything else that must not be trained on. The one definition in the package.
IGNORE_INDEX = -100


def shift_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: logits [B, T, V] -> [B, T-1, V] (drop last), labels [B, T] -> [B, T-1] (drop first)."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return logits[:, :-1, :], labels[:, 1:]


def count_target_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of tokens that are trained on: ``labels[:, 1:] != ignore_index`` (position 0 is never a target)."""
    return int((labels[..., 1:] != ignore_index).sum())


def per_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of every shifted position, shape [B, T-1]; 0 where the target is ``ignore_index``."""
    shift_logits, shift_labels = shift_logits_and_labels(logits, labels)
    losses = F.cross_entropy(
        shift_logits.float().reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return losses.view_as(shift_labels)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Shifted causal-LM cross-entropy, positions with label ``ignore_index`` left out.

    ``reduction="mean"``: mean over target tokens (what ``model(..., labels=labels).loss`` returns);
    ``"sum"``: the sum. ``num_items_in_batch``: the sum divided by this count, the target tokens of the
    *whole* accumulated batch (what ``Trainer`` passes so gradient accumulation equals one big batch).
    Raises ``ValueError`` when a mean has no target token (instead of returning NaN).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    total = per_token_loss(logits, labels, ignore_index, label_smoothing).sum()
    if num_items_in_batch is not None:
        if int(num_items_in_batch) <= 0:
            raise ValueError("num_items_in_batch must be > 0")
        return total / num_items_in_batch
    if reduction == "sum":
        return total
    count = count_target_tokens(labels, ignore_index)
    if count == 0:
        raise ValueError("no target tokens: every shifted label is ignore_index (prompt too long or all padding?)")
    return total / count


def sequence_mean_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over sequences of each sequence's token-mean loss (short answers weigh as much as long ones).

    Sequences without any target token are left out; raises ``ValueError`` if none has one.
    """
    losses = per_token_loss(logits, labels, ignore_index)
    counts = (labels[:, 1:] != ignore_index).sum(dim=1)
    keep = counts > 0
    if not bool(keep.any()):
        raise ValueError("no target tokens in any sequence")
    return (losses.sum(dim=1)[keep] / counts[keep]).mean()


def weighted_causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-example weights (e.g. one per task): ``sum_i w_i * sum_t l_it / sum_i w_i * n_i``.

    With all weights equal this is the token mean. Raises ``ValueError`` on negative weights or no target.
    """
    weights = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    if weights.shape != labels.shape[:1]:
        raise ValueError(f"weights must have shape [B]={tuple(labels.shape[:1])}, got {tuple(weights.shape)}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be >= 0")
    losses = per_token_loss(logits, labels, ignore_index)
    counts = (labels[:, 1:] != ignore_index).sum(dim=1).float()
    denominator = (weights * counts).sum()
    if float(denominator) == 0.0:
        raise ValueError("no weighted target tokens")
    return (weights * losses.sum(dim=1)).sum() / denominator


def mask_prompt(labels: torch.Tensor | Sequence[int], prompt_length: int) -> list[int]:
    """Labels with the first ``prompt_length`` positions set to -100: only the answer is trained on."""
    labels = list(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    if not 0 <= prompt_length <= len(labels):
        raise ValueError(f"prompt_length {prompt_length} outside 0..{len(labels)}")
    return [IGNORE_INDEX] * prompt_length + labels[prompt_length:]


def perplexity(loss: float | torch.Tensor) -> float:
    """Perplexity = exp(mean token cross-entropy in nats); ``inf`` past float range."""
    value = float(loss)
    return math.exp(value) if value < 700 else math.inf


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: Iterable[Mapping[str, torch.Tensor]],
    normalisation: str = "global_tokens",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Run forward/backward over micro-batches, leaving the summed gradients in ``model``; return the step's loss.

    ``normalisation="global_tokens"`` (correct): each micro-batch's *summed* loss divided by the target tokens
    of all micro-batches together, so the step equals one forward/backward on the concatenated batch.
    ``"per_micro_batch_mean"`` (the common mistake, e.g. ``loss = outputs.loss / accumulation_steps``): each
    micro-batch's token mean divided by the number of micro-batches, which over-weights tokens of
    micro-batches with few targets. The caller zeroes gradients before and steps the optimiser after.
    """
    if normalisation not in ("global_tokens", "per_micro_batch_mean"):
        raise ValueError(f"unknown normalisation {normalisation!r}")
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("no micro-batches")
    total_targets = sum(count_target_tokens(mb["labels"]) for mb in micro_batches)
    if total_targets == 0:
        raise ValueError("no target tokens in any micro-batch")
    reported = 0.0
    for mb in micro_batches:
        inputs = {k: v for k, v in mb.items() if k != "labels"}
        logits = model(**inputs).logits
        if normalisation == "global_tokens":
            loss = causal_lm_loss(logits, mb["labels"], num_items_in_batch=total_targets)
        else:
            mean = (loss_fn or causal_lm_loss)(logits, mb["labels"])
            loss = mean / len(micro_batches)
        loss.backward()
        reported += float(loss.detach())
    return reported
