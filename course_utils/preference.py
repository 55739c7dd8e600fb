"""Preference learning: reward models (Bradley-Terry), DPO and verifiable rewards, from scratch next to TRL.

The from-scratch functions here are the ones notebooks 09 and 10 prove equal to TRL 1.16:

* :func:`bradley_terry_loss` equals ``trl.RewardTrainer.compute_loss`` (``-logsigmoid(r_c - r_r).mean()``,
  optionally minus a margin), the rewards being the sequence-classification head read at the last non-pad token;
* :func:`dpo_loss` equals ``trl.DPOTrainer``'s default ``loss_type="sigmoid"`` loss
  ``-logsigmoid(beta * ((logp_c - ref_logp_c) - (logp_r - ref_logp_r))).mean()``, where each log-probability is
  the SUM over the completion tokens (prompt and padding excluded) computed by :func:`completion_logps`;
* :func:`tokenize_preference` reproduces how ``DPOTrainer`` splits a conversational row into prompt / chosen /
  rejected token ids.

Rows are ``{"prompt", "chosen", "rejected"}``. Strings are turned into TRL's conversational format by
:func:`to_conversational` (prompt = a user turn, chosen/rejected = one assistant turn each), so that the chat
template the SFT model was trained with is applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from course_utils.tasks import score_answer, task_to_messages

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PREFERENCE_FIELDS: tuple[str, str, str] = ("prompt", "chosen", "rejected")


# ----------------------------------------------------------------------------------------------------- data format
def to_conversational(row: dict[str, Any], system: str | None = None) -> dict[str, Any]:
    """Turn a ``prompt/chosen/rejected`` row of strings into TRL's conversational preference format.

    ``{"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``.
    Rows already in that format are returned unchanged (other keys are kept). The seed notes' ``question`` key is
    not accepted: TRL expects ``prompt`` (a ``question`` column is silently ignored as an implicit-prompt row).
    """
    missing = [field for field in PREFERENCE_FIELDS if field not in row]
    if missing:
        hint = " (rename 'question' to 'prompt')" if "question" in row and "prompt" in missing else ""
        raise KeyError(f"preference row lacks {missing}{hint}; keys: {sorted(row)}")
    out = dict(row)
    if isinstance(row["prompt"], str):
        prompt = [{"role": "user", "content": row["prompt"]}]
        if system:
            prompt.insert(0, {"role": "system", "content": system})
        out["prompt"] = prompt
    for field in ("chosen", "rejected"):
        if isinstance(row[field], str):
            out[field] = [{"role": "assistant", "content": row[field]}]
    return out


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_preference(row: dict[str, Any], tokenizer: "PreTrainedTokenizerBase") -> dict[str, list[int]]:
    """Token ids of a conversational row split as ``DPOTrainer`` does: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``.

    The prompt is rendered with ``add_generation_prompt=True`` (ends in ``<|im_start|>assistant\\n``); the full
    conversations prompt+chosen and prompt+rejected are rendered without it; the completion starts where the
    tokenized prompt and the tokenized conversation diverge. With the workbook's ChatML template a completion is
    ``reply <|im_end|> \\n``.
    """
    row = to_conversational(row)

    def ids(messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    prompt_ids = ids(row["prompt"], add_generation_prompt=True)
    chosen_full = ids(row["prompt"] + row["chosen"])
    rejected_full = ids(row["prompt"] + row["rejected"])
    n = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return {"prompt_ids": prompt_ids[:n], "chosen_ids": chosen_full[n:], "rejected_ids": rejected_full[n:]}


def collate_preference(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, "torch.Tensor"]:
    """Pad a list of :func:`tokenize_preference` outputs into one batch: the chosen rows first, then the rejected.

    Returns ``input_ids``/``attention_mask``/``completion_mask`` of shape ``(2B, T)`` (right padding), as TRL's DPO
    collator does; ``completion_mask`` is 1 on the reply tokens only.
    """
    import torch

    seqs, masks = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for ex in examples:
            seqs.append(list(ex["prompt_ids"]) + list(ex[key]))
            masks.append([0] * len(ex["prompt_ids"]) + [1] * len(ex[key]))
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (seq, mask) in enumerate(zip(seqs, masks)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        completion_mask[i, : len(seq)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


# ------------------------------------------------------------------------------------------------- reward model
def bradley_terry_loss(
    chosen_rewards: "torch.Tensor", rejected_rewards: "torch.Tensor", margin: "torch.Tensor | None" = None
) -> "torch.Tensor":
    """Bradley-Terry loss ``-log sigma(r_c - r_r [- margin])``, averaged over the batch.

    ``P(chosen > rejected) = sigma(r_c - r_r)``; minimising the negative log-likelihood pushes the chosen reward
    above the rejected one. Uses ``logsigmoid`` (stable for large differences) rather than ``log(sigmoid(.))``.
    """
    import torch.nn.functional as F

    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def pairwise_accuracy(
    chosen_scores: "Sequence[float] | torch.Tensor", rejected_scores: "Sequence[float] | torch.Tensor"
) -> float:
    """Fraction of pairs whose chosen score is strictly higher than the rejected one."""
    import torch

    chosen = torch.as_tensor(chosen_scores, dtype=torch.float64)
    rejected = torch.as_tensor(rejected_scores, dtype=torch.float64)
    if chosen.numel() == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    return float((chosen > rejected).double().mean())


def sequence_rewards(
    model: "PreTrainedModel", input_ids: "torch.Tensor", attention_mask: "torch.Tensor", pad_token_id: int
) -> "torch.Tensor":
    """Rewards ``(B,)`` read from a ``num_labels=1`` classification model at each row's last non-pad token.

    Done by hand from the per-position scores ``(B, T, 1)`` so the notebook can show what
    ``AutoModelForSequenceClassification`` pools (right padding; the pad id must differ from EOS, else the pooled
    position is the first EOS).
    """
    import torch

    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    scores = model.score(hidden).squeeze(-1)  # (B, T)
    non_pad = (input_ids != pad_token_id).long()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (positions * non_pad).argmax(-1)  # (B,) index of the rightmost non-pad token
    return scores[torch.arange(input_ids.shape[0], device=input_ids.device), last]


def reward_batch(rows: Sequence[dict[str, Any]], tokenizer: "PreTrainedTokenizerBase") -> dict[str, "torch.Tensor"]:
    """Tokenize rows as ``RewardTrainer`` does (whole conversation prompt+reply) and pad: chosen first, then rejected."""
    import torch

    seqs: list[list[int]] = []
    for key in ("chosen", "rejected"):
        for row in rows:
            conv = to_conversational(row)
            ids = tokenizer.apply_chat_template(conv["prompt"] + conv[key], tokenize=True, return_dict=True)
            seqs.append(list(ids["input_ids"]))
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def score_pairs(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    rows: Sequence[dict[str, Any]],
    batch_size: int = 32,
) -> tuple[list[float], list[float]]:
    """Reward-model scores of the chosen and rejected replies of ``rows`` (eval mode, no gradients)."""
    import torch

    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = reward_batch(chunk, tokenizer)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            rewards = model(**batch).logits.squeeze(-1).float().cpu()
            chosen += rewards[: len(chunk)].tolist()
            rejected += rewards[len(chunk) :].tolist()
    return chosen, rejected


# ---------------------------------------------------------------------------------------------------------- DPO
def completion_logps(
    model: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    completion_mask: "torch.Tensor",
) -> "torch.Tensor":
    """Sum of ``log p(token | prefix)`` over the completion tokens of each row: ``(B, T)`` ids -> ``(B,)``.

    Logits at position t predict token t+1, so the logits are cut to ``[:, :-1]`` and the targets and mask to
    ``[:, 1:]``. Prompt and padding positions have mask 0 and contribute nothing.
    """
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    token_logps = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def dpo_loss(
    policy_chosen_logps: "torch.Tensor",
    policy_rejected_logps: "torch.Tensor",
    ref_chosen_logps: "torch.Tensor",
    ref_rejected_logps: "torch.Tensor",
    beta: float = 0.1,
) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """DPO (sigmoid) loss and the implicit rewards ``beta * log(pi/pi_ref)`` of chosen and rejected.

    ``loss = -log sigma(beta * [(logp_c - ref_c) - (logp_r - ref_r)])``, averaged over the batch. The rewards are
    returned detached (they are metrics: accuracy = reward_c > reward_r, margin = reward_c - reward_r).
    """
    import torch.nn.functional as F

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def preference_logps(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    rows: Sequence[dict[str, Any]],
    batch_size: int = 32,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Summed completion log-probs ``(N,)`` of the chosen and of the rejected replies of ``rows`` (no gradients)."""
    import torch

    model.eval()
    chosen, rejected = [], []
    examples = [tokenize_preference(row, tokenizer) for row in rows]
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(model.device) for k, v in collate_preference(chunk, tokenizer.pad_token_id).items()}
            logps = completion_logps(model, **batch).cpu()
            chosen.append(logps[: len(chunk)])
            rejected.append(logps[len(chunk) :])
    return torch.cat(chosen), torch.cat(rejected)


def dpo_metrics(
    policy_chosen_logps: "torch.Tensor",
    policy_rejected_logps: "torch.Tensor",
    ref_chosen_logps: "torch.Tensor",
    ref_rejected_logps: "torch.Tensor",
    beta: float = 0.1,
) -> dict[str, float]:
    """Held-out DPO figures: loss, implicit-reward accuracy and mean margin, and the policy's own log-prob preference.

    ``logp_accuracy`` (the policy gives the chosen reply a higher summed log-prob than the rejected one) is
    meaningful before training too, whereas the implicit reward is 0 for every reply while policy == reference.
    """
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return {
        "loss": float(loss),
        "reward_accuracy": pairwise_accuracy(chosen_rewards, rejected_rewards),
        "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
        "logp_accuracy": pairwise_accuracy(policy_chosen_logps, policy_rejected_logps),
    }


def group_advantages(rewards: "torch.Tensor", group_size: int, scale: bool = True) -> "torch.Tensor":
    """GRPO's advantage: each reward minus the mean of its group of ``group_size`` completions of one prompt
    (divided by the group's std when ``scale``). ``(N*G,)`` -> ``(N*G,)``. No value model needed."""
    grouped = rewards.view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return adv.view(-1)


# ------------------------------------------------------------------------------------------------ TRL helpers
def sampled_reward(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    samples: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> float:
    """Mean 0/1 verifiable reward of ``samples`` sampled replies per checkable-task row (what GRPO maximises),
    measured on a fixed set of prompts with a fixed sampling seed, so before/after values are comparable."""
    from course_utils import sft

    prompts = [task_to_messages(row, with_answer=False) for row in rows]
    replies = sft.generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        num_samples=samples,
        temperature=temperature,
        seed=seed,
    )
    golds = [row for row in rows for _ in range(samples)]
    return sum(score_answer(r["task"], reply, r["answer"]) for r, reply in zip(golds, replies)) / len(replies)


def quiet_trainer_kwargs(device: "torch.device | str" = "cpu", seed: int = 0) -> dict[str, Any]:
    """TrainingArguments keywords shared by the TRL trainers of notebooks 09-11: the course's ``env.trainer_defaults``
    (silent, no checkpoints, the precision for ``device``: TRL's configs default to ``bf16=True``, which fails on a
    CPU without bf16 and emulates on a T4), seeded with the notebook's ``SEED`` (model init, data order).

    TRL's configs also default to ``gradient_checkpointing=True`` (``TrainingArguments``: ``False``): the forward
    pass is run a second time during the backward pass to keep fewer activations. On a CPU that buys nothing (the
    workbook's models are small, host memory is not the limit) and costs time (notebook 10's 20 DPO steps: 15.6 s
    with it, 14.3 s without, the same losses to the last digit), so it is off there; on
    a GPU, where activation memory decides whether a real model fits, TRL's default stays."""
    from course_utils import env

    defaults = env.trainer_defaults(device, seed)  # resolves the device once: use_cpu says where it runs
    return {**defaults, "seed": seed, "gradient_checkpointing": not defaults["use_cpu"]}


def rows_to_dataset(rows: Iterable[dict[str, Any]], conversational: bool = True) -> "datasets.Dataset":
    """A ``datasets.Dataset`` of preference rows (converted with :func:`to_conversational` by default)."""
    from datasets import Dataset

    rows = [to_conversational(r) if conversational else dict(r) for r in rows]
    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------ notebook 10's runs and their record
#: Notebook 10's beta sweep and GRPO runs at the record's length (``scripts/bench_outcomes.py --preference_runs``):
#: the notebook re-runs a slice live and reads the rest from here.
PREFERENCE_RUNS_FILE = "preference_runs.json"


def dpo_config(
    output_dir: Any,
    *,
    beta: float,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    device: "torch.device | str",
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """Notebook 10's ``DPOConfig``: cosine schedule after 5 warm-up steps, a log every 5 steps (fewer for short
    runs), sequences up to 256 tokens, and :func:`quiet_trainer_kwargs` (seeded, precision for ``device``)."""
    from trl import DPOConfig

    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=5,
        logging_steps=max(1, min(5, max_steps // 2)),
        beta=beta,
        max_length=256,
        **quiet_trainer_kwargs(device, seed=seed),
    )
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def dpo_train(policy: Any, reference: Any, tokenizer: Any, config: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Train ``policy`` in place with TRL's ``DPOTrainer`` (quiet, ``env.quiet_trainer``) on the preference ``rows``
    against the frozen ``reference``; return the trainer (its ``state.log_history`` holds the logged metrics)."""
    from trl import DPOTrainer

    from course_utils import env

    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=config, processing_class=tokenizer, train_dataset=rows_to_dataset(rows)
    )
    env.quiet_trainer(trainer).train()
    return trainer


def beta_sweep_point(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    start_state: Mapping[str, Any],
    train_rows: Sequence[dict[str, Any]],
    test_rows: Sequence[dict[str, Any]],
    ref_logps: "tuple[torch.Tensor, torch.Tensor]",
    config: Any,
    seed: int = 0,
    task_rows: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    """One point of notebook 10's beta sweep: ``policy`` restarted from ``start_state`` and trained for
    ``config.max_steps`` DPO steps at ``config.beta`` on the first steps x batch pairs of ``train_rows``, then
    measured on ``test_rows`` against the reference's log-probs ``ref_logps``.

    Returns the log-ratio margin (the implicit-reward margin divided by beta, comparable across betas), the
    implicit-reward accuracy, the drift ``mean |log pi(y_c) - log pi_ref(y_c)|``, the weight ``sigma(-beta * margin)``
    the DPO gradient still gives a pair (~0.5 untrained, -> 0 saturated) and, with ``task_rows``, task accuracy."""
    import torch

    from course_utils import env, sft

    policy.load_state_dict(start_state)
    env.seed_everything(seed)
    dpo_train(policy, reference, tokenizer, config, train_rows[: config.max_steps * config.per_device_train_batch_size])
    chosen, rejected = preference_logps(policy, tokenizer, test_rows)
    ref_c, ref_r = ref_logps
    beta = config.beta
    metrics = dpo_metrics(chosen, rejected, ref_c, ref_r, beta=beta)
    point = {
        "beta": beta,
        "steps": config.max_steps,
        "logratio_margin": metrics["reward_margin"] / beta,
        "reward_accuracy": metrics["reward_accuracy"],
        "drift": (chosen - ref_c).abs().mean().item(),
        "grad_weight": torch.sigmoid(-beta * ((chosen - ref_c) - (rejected - ref_r))).mean().item(),
    }
    if task_rows:
        point["task_accuracy"] = sft.task_accuracy(policy, tokenizer, task_rows)
    return point


def grpo_config(
    output_dir: Any,
    *,
    max_steps: int,
    learning_rate: float,
    device: "torch.device | str",
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """Notebook 10's ``GRPOConfig``: 4 prompts x 8 sampled replies per step (batch 32), replies up to 12 tokens
    (the longest gold answer is 11 plus ``<|im_end|>``), temperature 1.0, constant rate, a log every step, TRL's
    default loss (``loss_type="dapo"``, ``beta=0.0``: no reference model)."""
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=12,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        temperature=1.0,
        **quiet_trainer_kwargs(device, seed=seed),
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def grpo_practice_dataset(rows: Sequence[Mapping[str, Any]]) -> "datasets.Dataset":
    """Checkable-task rows as GRPO prompts: a conversational ``prompt`` plus the ``task`` and ``answer`` columns
    that TRL passes on to the reward function."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": task_to_messages(r, with_answer=False), "task": r["task"], "answer": r["answer"]} for r in rows]
    )


def grpo_run(
    policy: Any,
    tokenizer: Any,
    practice_rows: Sequence[Mapping[str, Any]],
    reward_funcs: list[Any],
    config: Any,
    seed: int = 0,
    heldout_rows: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Notebook 10's GRPO demo: ``GRPOTrainer`` on ``practice_rows`` with ``reward_funcs``, and the sampled reward
    on the same prompts (8 replies each, fixed sampling seed) before and after, so the two are comparable; with
    ``heldout_rows`` also the greedy task accuracy after. Trains ``policy`` in place."""
    from trl import GRPOTrainer

    from course_utils import env, sft, train

    before = sampled_reward(policy, tokenizer, practice_rows, samples=8, max_new_tokens=12, seed=seed)
    env.seed_everything(seed)
    trainer = env.quiet_trainer(
        GRPOTrainer(
            model=policy,
            reward_funcs=reward_funcs,
            args=config,
            processing_class=tokenizer,
            train_dataset=grpo_practice_dataset(practice_rows),
        )
    )
    trainer.train()
    run = {
        "learning_rate": config.learning_rate,
        "steps": config.max_steps,
        "rewards": train.log_history(trainer, "reward"),
        "zero_std": train.log_history(trainer, "frac_reward_zero_std"),
        "practice_reward": [
            before,
            sampled_reward(policy, tokenizer, practice_rows, samples=8, max_new_tokens=12, seed=seed),
        ],
    }
    if heldout_rows:
        run["heldout_accuracy"] = sft.task_accuracy(policy, tokenizer, heldout_rows)
    return run


#: ``data.read_jsonl`` schema of ``data_samples/preference_{train,test}.jsonl``.
PREFERENCE_SCHEMA: dict[str, type] = {"prompt": str, "chosen": str, "rejected": str}


def check_pair(row: dict[str, Any], path: Any = "<row>", line: int = 0) -> dict[str, Any]:
    """A preference row as the chat template will render it: each side passes ``chat_formats.check_content`` (not blank, no
    literal control token, no leading line break) and the two replies differ. Identical sides give a DPO loss of
    exactly log 2 and a zero gradient: the pair teaches nothing, so it is refused (or dropped and counted)."""
    from course_utils.chat_formats import check_content
    from course_utils.data import DataFormatError

    for name, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        check_content(row.get(name), path, line, name, role)
    if row["chosen"].strip() == row["rejected"].strip():
        raise DataFormatError(
            path, line, "rejected", "identical to 'chosen': nothing to prefer (DPO loss = log 2, zero gradient)"
        )
    return row


def load_preference_rows(
    path: Any, on_error: str = "raise", limit: int | None = None
) -> tuple[list[dict[str, Any]], Any]:
    """Read ``prompt/chosen/rejected`` JSONL with ``data.read_jsonl`` and :func:`check_pair` (strict or skip)."""
    from course_utils.data import read_jsonl

    return read_jsonl(path, PREFERENCE_SCHEMA, on_error=on_error, validate=check_pair, limit=limit)
