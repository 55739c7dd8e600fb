"""Tests of course_utils.preference: the from-scratch losses equal TRL 1.16's on the same batch."""

from __future__ import annotations

import math
import warnings

import pytest

from course_utils import env

env.setup_offline()

import torch  # noqa: E402

from course_utils import models, preference  # noqa: E402
from course_utils.tokenizer import train_tiny_tokenizer  # noqa: E402

ROWS = [
    {"prompt": f"Calculate the result.\n{i} + {i + 1}", "chosen": f"{2 * i + 1}", "rejected": f"{2 * i + 3}"}
    for i in range(6)
] + [
    {
        "prompt": "Write the word in capital letters.\nfrog",
        "chosen": "FROG",
        "rejected": "That is an interesting question!\nAnyway, it is FROG.",
    },
    {"prompt": "只回答城市名。\n请说出柯丽兰的首都。", "chosen": "赞雅维尔", "rejected": "罗加港"},
]


@pytest.fixture(scope="module")
def tok():
    texts = [r["prompt"] + " " + r["chosen"] + " " + r["rejected"] for r in ROWS] * 5
    return train_tiny_tokenizer(texts, vocab_size=300)


def _args(cls, tmp_path, **kw):
    return cls(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        **preference.quiet_trainer_kwargs("cpu"),
        **kw,
    )


def test_to_conversational_and_question_key():
    conv = preference.to_conversational(ROWS[0])
    assert conv["prompt"] == [{"role": "user", "content": ROWS[0]["prompt"]}]
    assert conv["chosen"] == [{"role": "assistant", "content": ROWS[0]["chosen"]}]
    assert preference.to_conversational(conv) == conv
    with pytest.raises(KeyError, match="question"):
        preference.to_conversational({"question": "q", "chosen": "a", "rejected": "b"})


def test_bradley_terry_basics():
    rc = torch.tensor([2.0, 0.0, -1.0])
    rr = torch.tensor([0.0, 0.0, 1.0])
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in (2.0, 0.0, -2.0)) / 3
    assert preference.bradley_terry_loss(rc, rr).item() == pytest.approx(expected, rel=1e-6)
    assert preference.bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2), rel=1e-6)
    # stable where log(sigmoid(x)) underflows
    assert torch.isfinite(preference.bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])))
    assert preference.pairwise_accuracy(rc, rr) == pytest.approx(1 / 3)


def test_bradley_terry_equals_reward_trainer(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(models.tiny_config(tok, num_labels=1))
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(
            model=model,
            args=_args(RewardConfig, tmp_path),
            processing_class=tok,
            train_dataset=preference.rows_to_dataset(ROWS),
        )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    ours = preference.reward_batch(ROWS, tok)
    assert torch.equal(ours["input_ids"], batch["input_ids"])
    assert torch.equal(ours["attention_mask"], batch["attention_mask"])
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
        rewards = preference.sequence_rewards(model, batch["input_ids"], batch["attention_mask"], tok.pad_token_id)
        library_rewards = model(**batch).logits.squeeze(-1)
    torch.testing.assert_close(rewards, library_rewards, rtol=1e-5, atol=1e-6)
    n = len(ROWS)
    ours_loss = preference.bradley_terry_loss(rewards[:n], rewards[n:]).item()
    assert abs(ours_loss - trl_loss) < 1e-6
    chosen, rejected = preference.score_pairs(model, tok, ROWS, batch_size=3)
    torch.testing.assert_close(torch.tensor(chosen), library_rewards[:n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(rejected), library_rewards[n:], rtol=1e-5, atol=1e-5)


def test_dpo_loss_basics():
    zeros = torch.zeros(3)
    loss, rc, rr = preference.dpo_loss(
        torch.tensor([-5.0, -2.0, -9.0]),
        torch.tensor([-6.0, -1.0, -9.0]),
        torch.tensor([-5.0, -2.0, -9.0]),
        torch.tensor([-6.0, -1.0, -9.0]),
        beta=0.1,
    )
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # policy == reference
    assert torch.equal(rc, zeros) and torch.equal(rr, zeros)
    loss, rc, rr = preference.dpo_loss(
        torch.tensor([-4.0]), torch.tensor([-8.0]), torch.tensor([-5.0]), torch.tensor([-6.0]), beta=0.5
    )
    assert rc.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-1.0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), rel=1e-6)
    m = preference.dpo_metrics(
        torch.tensor([-4.0]), torch.tensor([-8.0]), torch.tensor([-5.0]), torch.tensor([-6.0]), 0.5
    )
    assert m["reward_accuracy"] == 1.0 and m["reward_margin"] == pytest.approx(1.5) and m["logp_accuracy"] == 1.0


def test_dpo_loss_equals_dpo_trainer(tok, tmp_path):
    from trl import DPOConfig, DPOTrainer

    policy = models.build_model("tiny", tok, seed=0)
    reference = models.build_model("tiny", tok, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=_args(DPOConfig, tmp_path, beta=0.3),
            processing_class=tok,
            train_dataset=preference.rows_to_dataset(ROWS),
        )
    examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
    ours = [preference.tokenize_preference(row, tok) for row in ROWS]
    for mine, theirs in zip(ours, examples):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert mine[key] == theirs[key], key
    assert ours[0]["chosen_ids"][-2:] == tok.convert_tokens_to_ids(["<|im_end|>"]) + tok("\n")["input_ids"]
    batch = trainer.data_collator(examples)
    mine_batch = preference.collate_preference(ours, tok.pad_token_id)
    for key in mine_batch:
        assert torch.equal(mine_batch[key], batch[key]), key
    with torch.no_grad():  # make the policy differ from the reference
        gen = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        pl = preference.completion_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        rl = preference.completion_logps(
            reference, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
    n = len(ROWS)
    ours_loss, rc, rr = preference.dpo_loss(pl[:n], pl[n:], rl[:n], rl[n:], beta=0.3)
    assert abs(ours_loss.item() - math.log(2)) > 1e-3  # a non-trivial batch
    assert abs(ours_loss.item() - trl_loss) < 1e-5
    logged = trainer._metrics["eval"]  # compute_loss logs under "eval" when the model is in eval mode
    assert logged["rewards/margins"][-1] == pytest.approx((rc - rr).mean().item(), abs=1e-4)
    pc, pr = preference.preference_logps(policy, tok, ROWS, batch_size=3)
    torch.testing.assert_close(pc, pl[:n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pr, pl[n:], rtol=1e-4, atol=1e-4)


def test_group_advantages():
    adv = preference.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    assert adv.shape == (8,)
    assert adv[:4].sum().abs() < 1e-5 and adv[0] > 0 > adv[1]
    assert torch.equal(adv[4:], torch.zeros(4))  # all-equal group: no learning signal


def test_quiet_trainer_kwargs_checkpointing_off_on_cpu_only(tmp_path):
    # TRL's configs default to gradient checkpointing (a second forward in every backward): on a CPU it only costs
    from trl import DPOConfig

    assert DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).gradient_checkpointing is True
    assert _args(DPOConfig, tmp_path).gradient_checkpointing is False


def _preference_runs_record() -> dict:
    import json

    from course_utils import DATA_DIR

    return json.loads((DATA_DIR / preference.PREFERENCE_RUNS_FILE).read_text(encoding="utf-8"))


def test_preference_runs_record_is_current(load_script):
    """data_samples/preference_runs.json (notebook 10's beta sweep and GRPO runs) was made from today's SFT policy and
    data with the script's settings, and notebook 10's default parameters are the ones it records."""
    import json

    from course_utils import PROJECT_ROOT, train

    record, script = _preference_runs_record(), load_script("bench_outcomes")
    assert record["settings"] == json.loads(json.dumps(script.PREFERENCE_RUNS))
    assert set(record["inputs_sha256"]) == set(script.PREFERENCE_INPUTS)
    assert not train.stale_inputs(record)
    sweep, grpo = record["settings"]["sweep"], record["settings"]["grpo"]
    assert [(p["steps"], p["beta"]) for p in record["beta_sweep"]] == [
        (s, b) for s in sweep["steps"] for b in sweep["betas"]
    ]
    assert [r["learning_rate"] for r in record["grpo"]] == grpo["learning_rates"]
    assert all(len(r["rewards"]) == len(r["zero_std"]) == grpo["steps"] for r in record["grpo"])
    notebook = json.loads((PROJECT_ROOT / "notebooks" / "10_preference_alignment.ipynb").read_text(encoding="utf-8"))
    namespace: dict = {}
    exec("".join(notebook["cells"][1]["source"]), namespace)  # the parameters cell: plain assignments
    assert namespace["SWEEP_BETAS"] == sweep["betas"] and namespace["SWEEP_STEPS"] in sweep["steps"]
    assert set(namespace["SWEEP_LIVE"]) <= set(sweep["betas"])
    assert (namespace["BATCH_SIZE"], namespace["LEARNING_RATE"]) == (sweep["batch_size"], sweep["learning_rate"])
    assert namespace["GRPO_LEARNING_RATE"] in grpo["learning_rates"] and namespace["GRPO_PROMPTS"] == grpo["prompts"]
    assert namespace["GRPO_STEPS"] <= grpo["steps"] and namespace["SEED"] == record["seed"]


@pytest.mark.slow
def test_committed_preference_runs_are_rebuilt_by_their_command(tmp_path, run_script):
    """The record's command, re-run (about 3 minutes on 2 cores), gives every beta-sweep point within 5 % (margin,
    drift, gradient weight; task accuracy within 0.05 of 100 rows) and each GRPO run's seeded reward before training
    within 0.02; after 20 sampled GRPO steps the practised reward and the held-out accuracy within 0.06."""
    import json

    record = _preference_runs_record()
    args = record["command"].split()[1:] + ["--record_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    run_script(args, WORKBOOK_HEADLESS="1")
    rebuilt = json.loads((tmp_path / preference.PREFERENCE_RUNS_FILE).read_text(encoding="utf-8"))
    assert rebuilt["inputs_sha256"] == record["inputs_sha256"]
    for new, old in zip(rebuilt["beta_sweep"], record["beta_sweep"], strict=True):
        assert (new["beta"], new["steps"]) == (old["beta"], old["steps"])
        for key in ("logratio_margin", "drift", "grad_weight"):
            assert abs(new[key] - old[key]) <= 0.05 * abs(old[key]), (key, new, old)
        assert abs(new["task_accuracy"] - old["task_accuracy"]) <= 0.05, (new, old)
    for new, old in zip(rebuilt["grpo"], record["grpo"], strict=True):
        assert new["learning_rate"] == old["learning_rate"]
        assert abs(new["practice_reward"][0] - old["practice_reward"][0]) <= 0.02, (new, old)
        assert abs(new["practice_reward"][1] - old["practice_reward"][1]) <= 0.06, (new, old)
        assert abs(new["heldout_accuracy"] - old["heldout_accuracy"]) <= 0.06, (new, old)


def test_bench_outcomes_prints_the_records_goals(load_script, tmp_path):
    """scripts/bench_outcomes.py reports the LoRA-vs-full, PEFT-table and beta-sweep goals from the committed records
    (met today), and reports a goal as not met when a record misses it."""
    import json

    from course_utils import DATA_DIR

    script = load_script("bench_outcomes")
    rows = script.record_goal_rows()
    assert len(rows) == 4 and all(met for *_, met in rows), rows
    record = json.loads((DATA_DIR / "peft_comparison.json").read_text(encoding="utf-8"))
    record["methods"]["full"]["test_accuracy"]["all"] = 0.9  # full fine-tuning far ahead of every small LoRA
    (tmp_path / "peft_comparison.json").write_text(json.dumps(record), encoding="utf-8")
    assert [met for *_, met in script.record_goal_rows(tmp_path)] == [False, True]
