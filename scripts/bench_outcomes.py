#!/usr/bin/env python
"""What the embedded default teaches, measured against the learning-outcome goals (issue: a stronger default).

Prints, for the committed models on this machine, each figure next to its goal and whether it is met:

* perplexity: tiny-base on the pretraining documents it never trained on (``evaluation.unseen_documents``) next to
  the old, contaminated measurement (test side of a split of packed blocks);
* SFT: held-out task accuracy of ``tiny-sft`` (assistant-only loss) and ``tiny-sft-all-tokens`` per task type;
* DPO: the policy's own log-prob preference accuracy and the per-kind log-prob margins before and after a DPO run
  of notebook 10's recipe (``--dpo_steps``), on the held-out pairs.

    python scripts/bench_outcomes.py                  # about 2 minutes on 2 CPU cores
    python scripts/bench_outcomes.py --dpo_steps 0    # skip the DPO run
    python scripts/bench_outcomes.py --sft_seeds 3    # + both SFT recipes re-run with 3 seeds (~20 minutes)
    python scripts/bench_outcomes.py --dpo_steps 0 --preference_runs   # notebook 10's sweep and GRPO record
    python scripts/bench_outcomes.py --dpo_steps 0 --sft_first_steps   # notebook 06's first-steps record

Writes ``<output_dir>/bench_outcomes.json``. The LoRA-vs-full and PEFT figures are made by ``scripts/bench_peft.py``;
this script prints them against their goals from its committed record (``data_samples/peft_comparison.json``), and
notebook 10's beta sweep from ``data_samples/preference_runs.json``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils import env

env.setup_offline()

#: The goals the embedded default is measured against.
GOALS = {
    "sft_heldout_accuracy": 0.80,  # over all checkable tasks, after SFT
    "sft_min_task_accuracy": 0.50,  # every task type
}


@dataclass
class OutcomeArguments:
    output_dir: str = field(default="build/bench_outcomes", metadata={"help": "where bench_outcomes.json goes"})
    dpo_steps: int = field(default=20, metadata={"help": "DPO steps of notebook 10's recipe (0 skips the run)"})
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 1e-4
    dpo_batch_size: int = 16
    sft_seeds: int = field(default=0, metadata={"help": "re-run both SFT recipes with seeds 0..N-1 (0: skip)"})
    preference_runs: bool = field(
        default=False,
        metadata={
            "help": "re-run notebook 10's beta sweep and GRPO runs at the record's length and write "
            "data_samples/preference_runs.json (~3 minutes)"
        },
    )
    sft_first_steps: bool = field(
        default=False,
        metadata={
            "help": "re-run the first 25 steps of configs/sft_tiny.yaml logging every step and write "
            "data_samples/sft_first_steps.json (notebook 06's live check; ~30 s)"
        },
    )
    record_dir: str = field(default="data_samples", metadata={"help": "where the --*_runs/--*_steps records go"})
    seed: int = 0


def perplexity_figures() -> dict:
    """tiny-base on never-trained documents vs on the test side of a block split (which shares documents)."""
    from course_utils import DATA_DIR, data, evaluation, models, train

    model, tokenizer = models.load_model_and_tokenizer("tiny-base")
    unseen = evaluation.heldout_blocks(tokenizer)
    raw = data.load_corpus(DATA_DIR / "pretrain_corpus.jsonl")
    packed = data.tokenize_and_pack(raw, tokenizer, block_size=evaluation.HELDOUT_BLOCK_SIZE)
    test_blocks = packed.train_test_split(test_size=evaluation.HELDOUT_TEST_SIZE, seed=evaluation.HELDOUT_SEED)["test"]
    trained, touched = evaluation.block_split_documents()
    _, ppl_unseen = train.dataset_perplexity(model, unseen, batch_size=16)
    _, ppl_blocks = train.dataset_perplexity(model, test_blocks, batch_size=16)
    return {
        "unseen_documents": len(evaluation.unseen_documents()),
        "unseen_blocks": len(unseen),
        "perplexity_unseen_documents": round(ppl_unseen, 3),
        "perplexity_block_split": round(ppl_blocks, 3),
        "block_split_documents_also_trained": round(len(touched & trained) / len(touched), 3),
    }


def sft_figures() -> dict:
    """Held-out task accuracy per task type of the two committed SFT models."""
    from course_utils import models, sft, tasks

    rows = tasks.load_task_rows()
    out = {}
    for name in ("tiny-sft", "tiny-sft-all-tokens"):
        model, tokenizer = models.load_model_and_tokenizer(name)
        out[name] = {k: round(v, 4) for k, v in sft.score_tasks(model, tokenizer, rows).by_task().items()}
    return out


def dpo_figures(args: OutcomeArguments) -> dict:
    """Notebook 10's DPO recipe: the policy's own log-prob ranking and margins, before and after, held out."""
    import torch

    from course_utils import DATA_DIR, models, preference, sft, tasks

    policy, tokenizer = models.load_model_and_tokenizer("tiny-sft")
    reference = copy.deepcopy(policy).eval()
    train_rows, _ = preference.load_preference_rows(DATA_DIR / "preference_train.jsonl")
    test_rows, _ = preference.load_preference_rows(DATA_DIR / "preference_test.jsonl")
    task_rows = tasks.load_task_rows(DATA_DIR / "tasks_test.jsonl")
    task_before = sft.task_accuracy(reference, tokenizer, task_rows)
    ref_c, ref_r = preference.preference_logps(reference, tokenizer, test_rows)
    device = next(policy.parameters()).device
    config = preference.dpo_config(
        env.cache_dir() / "bench_outcomes_dpo",
        beta=args.dpo_beta,
        max_steps=args.dpo_steps,
        batch_size=args.dpo_batch_size,
        learning_rate=args.dpo_learning_rate,
        device=device,
        seed=args.seed,
    )
    preference.dpo_train(policy, reference, tokenizer, config, train_rows)
    pol_c, pol_r = preference.preference_logps(policy, tokenizer, test_rows)
    after = preference.dpo_metrics(pol_c, pol_r, ref_c, ref_r, beta=args.dpo_beta)
    kinds = {}
    for kind in sorted({r["rejected_kind"] for r in test_rows}):
        idx = torch.tensor([i for i, r in enumerate(test_rows) if r["rejected_kind"] == kind])
        kinds[kind] = {
            "n": len(idx),
            "logp_accuracy": [
                round((ref_c[idx] > ref_r[idx]).float().mean().item(), 3),
                round((pol_c[idx] > pol_r[idx]).float().mean().item(), 3),
            ],
            "logp_margin": [
                round((ref_c[idx] - ref_r[idx]).mean().item(), 3),
                round((pol_c[idx] - pol_r[idx]).mean().item(), 3),
            ],
        }
    task_after = sft.task_accuracy(policy, tokenizer, task_rows)
    return {
        "steps": args.dpo_steps,
        "beta": args.dpo_beta,
        "learning_rate": args.dpo_learning_rate,
        "task_accuracy": [round(task_before, 3), round(task_after, 3)],
        "logp_accuracy": [round((ref_c > ref_r).float().mean().item(), 3), round(after["logp_accuracy"], 3)],
        "implicit_reward_accuracy_after": round(after["reward_accuracy"], 3),
        "by_kind": kinds,
    }


#: The runs notebook 10 reads from ``data_samples/preference_runs.json`` (it re-runs a slice of them live).
PREFERENCE_RUNS = {
    "sweep": {
        "betas": [0.02, 0.2, 2.0],
        "steps": [5, 40],
        "batch_size": 16,
        "learning_rate": 1e-4,
        "test_pairs": 100,
        "task_rows": 100,
    },
    "grpo": {"learning_rates": [5e-5, 1e-4, 2e-4], "steps": 20, "prompts": 32, "heldout_rows": 300},
}
#: The files a record depends on: a change to any of them makes the record stale (checked by notebook 10 and tests).
PREFERENCE_INPUTS = (
    "data_samples/tiny_sft/model.safetensors",
    "data_samples/preference_train.jsonl",
    "data_samples/preference_test.jsonl",
    "data_samples/tasks_train.jsonl",
    "data_samples/tasks_test.jsonl",
)


def preference_runs(seed: int = 0) -> dict:
    """Notebook 10's beta sweep (every beta at every length, from the same SFT policy) and its GRPO demo at each
    learning rate, with the settings in ``PREFERENCE_RUNS``."""
    from course_utils import DATA_DIR, models, preference, sft, tasks, train

    policy, tokenizer = models.load_model_and_tokenizer("tiny-sft")
    device = next(policy.parameters()).device
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    start = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    train_rows, _ = preference.load_preference_rows(DATA_DIR / "preference_train.jsonl")
    test_rows, _ = preference.load_preference_rows(DATA_DIR / "preference_test.jsonl")
    task_test = tasks.load_task_rows(DATA_DIR / "tasks_test.jsonl")
    sweep_cfg, grpo_cfg = PREFERENCE_RUNS["sweep"], PREFERENCE_RUNS["grpo"]
    sweep_test = test_rows[: sweep_cfg["test_pairs"]]
    ref_logps = preference.preference_logps(reference, tokenizer, sweep_test)
    points = []
    for steps in sweep_cfg["steps"]:
        for beta in sweep_cfg["betas"]:
            config = preference.dpo_config(
                env.cache_dir() / "bench_outcomes_sweep",
                beta=beta,
                max_steps=steps,
                batch_size=sweep_cfg["batch_size"],
                learning_rate=sweep_cfg["learning_rate"],
                device=device,
                seed=seed,
            )
            point = preference.beta_sweep_point(
                policy,
                reference,
                tokenizer,
                start,
                train_rows,
                sweep_test,
                ref_logps,
                config,
                seed=seed,
                task_rows=task_test[: sweep_cfg["task_rows"]],
            )
            points.append({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()})
            print("  sweep", json.dumps(points[-1]), flush=True)
    practice = tasks.load_task_rows(DATA_DIR / "tasks_train.jsonl")[: grpo_cfg["prompts"]]
    reward = tasks.verifiable_reward
    runs = []
    for lr in grpo_cfg["learning_rates"]:
        policy.load_state_dict(start)
        config = preference.grpo_config(
            env.cache_dir() / "bench_outcomes_grpo",
            max_steps=grpo_cfg["steps"],
            learning_rate=lr,
            device=device,
            seed=seed,
        )
        run = preference.grpo_run(
            policy, tokenizer, practice, [reward], config, seed=seed, heldout_rows=task_test[: grpo_cfg["heldout_rows"]]
        )
        runs.append(
            {
                "learning_rate": lr,
                "steps": run["steps"],
                "rewards": [round(v, 4) for _, v in run["rewards"]],
                "zero_std": [round(v, 4) for _, v in run["zero_std"]],
                "practice_reward": [round(v, 4) for v in run["practice_reward"]],
                "heldout_accuracy": round(run["heldout_accuracy"], 4),
            }
        )
        print("  grpo", json.dumps({k: v for k, v in runs[-1].items() if k not in ("rewards", "zero_std")}), flush=True)
    return {
        "command": "python scripts/bench_outcomes.py --dpo_steps 0 --preference_runs",
        "settings": PREFERENCE_RUNS,
        "seed": seed,
        "inputs_sha256": train.inputs_sha256(PREFERENCE_INPUTS),
        "sft_heldout_accuracy": round(
            sft.task_accuracy(reference, tokenizer, task_test[: grpo_cfg["heldout_rows"]]), 4
        ),
        "beta_sweep": points,
        "grpo": runs,
    }


SFT_RECIPES = {"assistant-only": "configs/sft_tiny.yaml", "all-tokens": "configs/sft_tiny_all_tokens.yaml"}
#: Notebook 06 re-runs the first steps of the committed assistant-only SFT live and compares them, step by step, with
#: this record of the same recipe's first ``steps`` steps logged at every step. The Trainer logs the mean loss of
#: each logging interval, so the record's mean equals the committed run's first logged loss (step 25): the bridge
#: from a few live steps to the committed checkpoint.
SFT_FIRST_STEPS = {"recipe": "configs/sft_tiny.yaml", "steps": 25}


def run_sft_script(args: list[str], target: Path) -> dict:
    """``python scripts/sft.py ARGS --output_dir TARGET`` offline in a child process; that run's ``metadata.json``."""
    import os
    import subprocess

    from course_utils import PROJECT_ROOT

    subprocess.run(
        [sys.executable, "scripts/sft.py", *args, "--output_dir", str(target)],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    return json.loads((target / "metadata.json").read_text(encoding="utf-8"))


def sft_first_steps_inputs() -> list[str]:
    """The files the first-steps record depends on: the recipe, the base weights and the recipe's data files."""
    import yaml

    from course_utils import PROJECT_ROOT, chat_formats

    config = yaml.safe_load((PROJECT_ROOT / SFT_FIRST_STEPS["recipe"]).read_text(encoding="utf-8"))
    info = chat_formats.load_dataset_info(PROJECT_ROOT / config["dataset_info"])
    return [
        SFT_FIRST_STEPS["recipe"],
        "data_samples/tiny_base/model.safetensors",
        *(f"{config['dataset_dir']}/{info[name]['file_name']}" for name in config["dataset"].split(",")),
    ]


def sft_first_steps(work_dir: Path) -> dict:
    """``scripts/sft.py`` on the committed recipe, stopped after ``SFT_FIRST_STEPS["steps"]`` steps (the schedule of
    the full run) and logging every step: the record notebook 06 checks its live steps against."""
    from course_utils import train

    steps = SFT_FIRST_STEPS["steps"]
    args = [SFT_FIRST_STEPS["recipe"], "--logging_steps", "1", "--stop_after_steps", str(steps), "--eval_tasks", ""]
    history = run_sft_script(args, work_dir / "sft_first_steps")["train_loss_history"]
    return {
        "command": "python scripts/bench_outcomes.py --dpo_steps 0 --sft_first_steps",
        "run": "python scripts/sft.py " + " ".join(args[:-1]) + " ''",
        "steps": steps,
        "loss_history": history,
        "inputs_sha256": train.inputs_sha256(sft_first_steps_inputs()),
    }


def sft_seed_figures(seeds: int, work_dir: Path) -> dict:
    """Both SFT recipes re-run from tiny-base with ``--seed 0..seeds-1``: held-out accuracy per seed, mean, spread."""
    import statistics

    out: dict = {}
    for recipe, config in SFT_RECIPES.items():
        runs = []
        for seed in range(seeds):
            meta = run_sft_script([config, "--seed", str(seed)], work_dir / f"sft_{recipe}_seed{seed}")
            runs.append(meta["task_accuracy"]["after"])
            print(f"  {recipe} seed {seed}: {runs[-1]}", flush=True)
        out[recipe] = {
            "runs": runs,
            **{
                task: {
                    "mean": round(statistics.mean(r[task] for r in runs), 4),
                    "stdev": round(statistics.stdev(r[task] for r in runs), 4) if len(runs) > 1 else 0.0,
                }
                for task in runs[0]
            },
        }
    return out


SEED_COMPARISON_FILE = Path(__file__).resolve().parent.parent / "data_samples" / "sft_seed_comparison.json"


def write_seed_comparison(results: dict, path: Path = SEED_COMPARISON_FILE) -> None:
    """Commit-able record of the seed comparison that notebook 06 cites and checks (recipes, per-seed accuracy)."""
    from course_utils import PROJECT_ROOT, train

    record = {
        "command": "python scripts/bench_outcomes.py --sft_seeds "
        f"{len(results['sft_seeds']['assistant-only']['runs'])}",
        "recipes": SFT_RECIPES,
        "config_sha256": {name: train.file_sha256(PROJECT_ROOT / cfg) for name, cfg in SFT_RECIPES.items()},
        "seeds": list(range(len(results["sft_seeds"]["assistant-only"]["runs"]))),
        "accuracy": results["sft_seeds"],
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def record_goal_rows(data_dir: Path | None = None) -> list[tuple[str, str, str, bool]]:
    """(figure, measured, goal, met) read from the committed records the notebooks check: the PEFT comparison
    (``scripts/bench_peft.py``, notebook 07) and notebook 10's runs (``--preference_runs``)."""
    from course_utils import DATA_DIR

    data_dir = DATA_DIR if data_dir is None else data_dir
    rows = []
    peft_file = data_dir / "peft_comparison.json"
    if peft_file.exists():
        methods = json.loads(peft_file.read_text(encoding="utf-8"))["methods"]
        full = methods["full"]["test_accuracy"]["all"]
        small = {m: r for m, r in methods.items() if m.startswith("lora") and r["trainable_pct"] < 2}
        best = max(small, key=lambda m: small[m]["test_accuracy"]["all"])
        acc = small[best]["test_accuracy"]["all"]
        rows.append(
            (
                "LoRA (< 2 % trainable) vs full fine-tuning",
                f"{best} {acc:.2f} ({small[best]['trainable_pct']:.2f} %) vs {full:.2f}",
                "within 0.05 of full",
                acc >= full - 0.05,
            )
        )
        accs = sorted({round(r["test_accuracy"]["all"], 2) for r in methods.values()})
        rows.append(
            (
                "PEFT table: distinct held-out accuracies",
                " / ".join(f"{a:.2f}" for a in accs),
                "non-trivial, different",
                len(accs) >= 5 and accs[-1] >= 0.5,
            )
        )
    runs_file = data_dir / "preference_runs.json"
    if runs_file.exists():
        runs = json.loads(runs_file.read_text(encoding="utf-8"))
        longest = max(runs["settings"]["sweep"]["steps"])
        points = [p for p in runs["beta_sweep"] if p["steps"] == longest]
        margins = [p["logratio_margin"] for p in points]
        rows.append(
            (
                f"DPO beta sweep, {longest} steps: log-ratio margin",
                " / ".join(f"{m:.1f}" for m in margins),
                "falls as beta grows",
                margins == sorted(margins, reverse=True) and margins[0] > 2 * margins[-1],
            )
        )
        drifts = [p["drift"] for p in points]
        rows.append(
            (
                f"DPO beta sweep, {longest} steps: drift",
                " / ".join(f"{d:.2f}" for d in drifts),
                "smallest beta drifts further",
                drifts[0] > 1.5 * drifts[-1],
            )
        )
    return rows


# A table of goals: one row per line reads better than the formatter's layout.
# fmt: off
def goal_rows(results: dict) -> list[tuple[str, str, str, bool]]:
    """(figure, measured, goal, met) for the goals this script measures, then those of the committed records."""
    rows = []
    sft = results["sft"]["tiny-sft"]
    per_task = {k: v for k, v in sft.items() if k != "all"}
    rows.append(("SFT held-out accuracy (tiny-sft)", f"{sft['all']:.3f}", f">= {GOALS['sft_heldout_accuracy']}",
                 sft["all"] >= GOALS["sft_heldout_accuracy"]))
    worst = min(per_task, key=per_task.get)
    rows.append(("SFT worst task type", f"{worst} {per_task[worst]:.3f}", f">= {GOALS['sft_min_task_accuracy']}",
                 per_task[worst] >= GOALS["sft_min_task_accuracy"]))
    unseen = {t: per_task[t] for t in ("capital", "currency") if t in per_task}  # countries asked in no train file
    if unseen:
        low = min(unseen, key=unseen.get)
        rows.append(("SFT on countries never asked in training", f"{low} {unseen[low]:.3f}",
                     f">= {GOALS['sft_min_task_accuracy']}", unseen[low] >= GOALS["sft_min_task_accuracy"]))
    ppl = results["perplexity"]
    rows.append(("perplexity on never-trained documents", f"{ppl['perplexity_unseen_documents']:.2f}",
                 "measured on unseen documents", ppl["unseen_documents"] > 0))
    if "sft_seeds" in results:
        a, b = results["sft_seeds"]["assistant-only"]["all"], results["sft_seeds"]["all-tokens"]["all"]
        gap = a["mean"] - b["mean"]
        spread = max(a["stdev"], b["stdev"])
        rows.append(("assistant-only minus all-tokens (mean of seeds)", f"{gap:+.3f} (sd {spread:.3f})",
                     ">= 3 seeds, gap vs spread", len(results["sft_seeds"]["assistant-only"]["runs"]) >= 3))
        runs = results["sft_seeds"]["assistant-only"]["runs"]  # the committed model is seed 0: is it a lucky one?
        rows.append(("SFT held-out accuracy, every seed", " / ".join(f"{r['all']:.2f}" for r in runs),
                     f">= {GOALS['sft_heldout_accuracy']}", min(r["all"] for r in runs) >= GOALS["sft_heldout_accuracy"]))
        worst_per_seed = [min(v for k, v in r.items() if k != "all") for r in runs]
        rows.append(("SFT worst task type, every seed", " / ".join(f"{w:.2f}" for w in worst_per_seed),
                     f">= {GOALS['sft_min_task_accuracy']}", min(worst_per_seed) >= GOALS["sft_min_task_accuracy"]))
    if "dpo" in results:
        dpo = results["dpo"]
        rows.append(("DPO log-prob preference accuracy", f"{dpo['logp_accuracy'][0]:.3f} -> {dpo['logp_accuracy'][1]:.3f}",
                     "rises (not true by construction)", dpo["logp_accuracy"][1] > dpo["logp_accuracy"][0]))
        rows.append(("DPO held-out task accuracy", f"{dpo['task_accuracy'][0]:.3f} -> {dpo['task_accuracy'][1]:.3f}",
                     "drops by <= 0.05", dpo["task_accuracy"][1] >= dpo["task_accuracy"][0] - 0.05))
        for kind, k in dpo["by_kind"].items():
            rows.append((f"DPO log-prob margin, rejected={kind}", f"{k['logp_margin'][0]:.2f} -> {k['logp_margin'][1]:.2f}",
                         "widens", k["logp_margin"][1] > k["logp_margin"][0]))
    return rows + record_goal_rows()
# fmt: on


def main() -> None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(OutcomeArguments).parse_args_into_dataclasses()
    env.seed_everything(args.seed)
    started = time.time()
    results: dict = {"arguments": asdict(args)}
    results["perplexity"] = perplexity_figures()
    print("perplexity", json.dumps(results["perplexity"]), flush=True)
    results["sft"] = sft_figures()
    print("sft", json.dumps(results["sft"]), flush=True)
    if args.sft_seeds > 0:
        results["sft_seeds"] = sft_seed_figures(args.sft_seeds, Path(args.output_dir) / "runs")
        print("sft_seeds", json.dumps({k: v["all"] for k, v in results["sft_seeds"].items()}), flush=True)
        write_seed_comparison(results)
    if args.preference_runs:
        record = preference_runs(args.seed)
        from course_utils.preference import PREFERENCE_RUNS_FILE

        target = Path(args.record_dir) / PREFERENCE_RUNS_FILE
        target.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {target}", flush=True)
    if args.sft_first_steps:
        from course_utils.sft import FIRST_STEPS_FILE

        target = Path(args.record_dir) / FIRST_STEPS_FILE
        target.write_text(
            json.dumps(sft_first_steps(Path(args.output_dir) / "runs"), indent=1) + "\n", encoding="utf-8"
        )
        print(f"wrote {target}", flush=True)
    if args.dpo_steps > 0:
        results["dpo"] = dpo_figures(args)
        print("dpo", json.dumps(results["dpo"]), flush=True)
    results["goals"] = [dict(zip(("figure", "measured", "goal", "met"), row)) for row in goal_rows(results)]
    results["seconds"] = round(time.time() - started, 1)
    print(f"\n{'figure':<42}{'measured':>22}  {'goal':<32}met")
    for row in results["goals"]:
        print(f"{row['figure']:<42}{row['measured']:>22}  {row['goal']:<32}{'yes' if row['met'] else 'NO'}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_outcomes.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\n{results['seconds']:.0f} s; wrote {out / 'bench_outcomes.json'}")
    assert all(
        math.isfinite(results["perplexity"][k]) for k in ("perplexity_unseen_documents", "perplexity_block_split")
    )


if __name__ == "__main__":
    main()
