#!/usr/bin/env python
"""Measured comparison of fine-tuning methods on the workbook's SFT task (the table of notebook 07).

Full fine-tuning, LoRA (q,v and all linear layers), a bottleneck adapter, prefix tuning, prompt tuning and IA3,
each trained from the same base for ``--max_steps`` steps on ``data_samples/tasks_train.jsonl`` (ChatML,
assistant-only labels) and scored on ``tasks_test.jsonl`` by greedy generation. Measures trainable parameters,
optimizer-state bytes, gradient/activation bytes, seconds per step, held-out loss and accuracy.

    python scripts/bench_peft.py --max_steps 10
    python scripts/bench_peft.py --model Qwen/Qwen2.5-0.5B --methods lora,prompt --max_steps 200 --device cuda

Writes ``<output_dir>/bench_peft.json`` and ``bench_peft.md`` and prints the Markdown table.

With ``--fit_lr`` each method is trained at every learning rate of its grid (``FIT_GRID``) on the training rows
minus ``--validation_rows`` rows set aside; the rate with the best validation accuracy (then the lower validation
loss) is that method's fitted rate, and its held-out test accuracy is the method's result. The test set never picks
a rate. ``--record`` writes the whole grid as JSON; notebook 07 reads the committed record:

    python scripts/bench_peft.py --fit_lr --max_steps 300 --batch_size 32 --n_test 300 --schedule cosine \
        --warmup_steps 20 --record data_samples/peft_comparison.json

One ``--seed`` drives the validation split, the batch order and every method's initialisation.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course_utils import env

env.setup_offline()


@dataclass
class BenchArguments:
    model: str = field(default="tiny-base", metadata={"help": "tiny-base, tiny, or a hub name / local folder"})
    methods: str = field(
        default=",".join(("full", "lora", "lora-all", "adapter", "prefix", "prompt", "ia3")),
        metadata={
            "help": "comma-separated name[/rN][+tokens] (course_utils.peft_methods.METHODS; "
            "--fit_lr without --methods: every FIT_GRID method)"
        },
    )
    max_steps: int = field(default=10, metadata={"help": "training steps per method (notebook 07: 10)"})
    batch_size: int = field(default=16)
    max_length: int = field(default=64)
    n_test: int = field(default=100, metadata={"help": "held-out rows scored by generation"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1)
    device: str = field(default="auto")
    seed: int = field(default=0)
    output_dir: str = field(default="build/bench_peft")
    schedule: str = field(default="constant", metadata={"help": "constant | cosine (linear warm-up, cosine decay)"})
    warmup_steps: int = field(default=0)
    fit_lr: bool = field(default=False, metadata={"help": "fit each method's learning rate on a validation split"})
    validation_rows: int = field(default=200, metadata={"help": "training rows set aside to pick the rate"})
    record: str = field(default="", metadata={"help": "with --fit_lr: write the grid and the results here"})


#: Learning rates tried per method with ``--fit_lr``: three per method around the rate usual for it (parameter-efficient
#: methods start from zero/identity and need larger rates), a factor 3 apart, or 10 where a first grid put the best
#: rate at an edge and its accuracy stayed at the base's (adapter, prefix, prompt: measured up to 1e-1 / 3e-1). A method is
#: ``name[/rN][+tokens]``: a ``course_utils.peft_methods.METHODS`` name, a LoRA rank other than ``--r`` (alpha = 2 * rank,
#: the same alpha/r as the default r=8, alpha=16), and ``+tokens`` to train the ChatML tokens' embedding rows.
FIT_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-4, 1e-3, 3e-3),
    "lora": (3e-3, 1e-2, 3e-2),
    "lora+tokens": (3e-3, 1e-2, 3e-2),
    "lora-all": (3e-3, 1e-2, 3e-2),
    "lora-all/r2+tokens": (3e-3, 1e-2, 3e-2),
    "adapter": (1e-3, 1e-2, 1e-1),
    "prefix": (3e-3, 3e-2, 1e-1),
    "prompt": (1e-2, 1e-1, 3e-1),
    "ia3": (1e-2, 3e-2, 1e-1),
}


def parse_method(spec: str, args: BenchArguments) -> tuple[str, int, float, bool]:
    """``"lora-all/r2+tokens"`` -> ``("lora-all", 2, 4.0, True)`` (see ``FIT_GRID``)."""
    from course_utils import peft_methods

    match = re.fullmatch(r"([a-z0-9-]+)(?:/r([1-9]\d*))?(\+tokens)?", spec)
    if not match or match.group(1) not in peft_methods.METHODS:
        raise SystemExit(f"unknown method {spec!r}: expected name[/rN][+tokens] with a name in {peft_methods.METHODS}")
    name, rank, tokens = match.group(1), match.group(2), bool(match.group(3))
    if (rank or tokens) and not name.startswith("lora"):
        raise SystemExit(f"{spec!r}: a rank and +tokens are LoRA options")
    return (name, int(rank), 2.0 * int(rank), tokens) if rank else (name, args.r, args.alpha, tokens)


def main() -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    import torch

    from course_utils import DATA_DIR, models, peft_methods, sft, tasks
    from course_utils.tokenizer import chat_token_ids

    env.seed_everything(args.seed)
    device = env.pick_device(args.device)
    base, tokenizer = models.load_model_and_tokenizer(args.model, seed=args.seed)
    base.to(device).eval()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.fit_lr and args.methods == BenchArguments.methods:
        methods = list(FIT_GRID)
    for method in methods:
        parse_method(method, args)
        if args.fit_lr and method not in FIT_GRID:
            raise SystemExit(f"--fit_lr: no learning-rate grid for {method!r} (FIT_GRID: {list(FIT_GRID)})")
    if args.record and not args.fit_lr:
        raise SystemExit("--record is written by --fit_lr runs only")

    train_rows = tasks.load_task_rows(DATA_DIR / "tasks_train.jsonl")
    test_rows = tasks.load_task_rows(DATA_DIR / "tasks_test.jsonl")[: args.n_test]
    validation_rows: list = []
    if args.fit_lr:
        if not 0 < args.validation_rows < len(train_rows):
            raise SystemExit(
                f"--validation_rows must be between 1 and {len(train_rows) - 1}, got {args.validation_rows}"
            )
        order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
        validation_rows = [train_rows[i] for i in order[: args.validation_rows]]
        train_rows = [train_rows[i] for i in sorted(order[args.validation_rows :])]

    def encode(rows: list) -> list:
        return sft.encode_rows([tasks.task_to_messages(r) for r in rows], tokenizer, args.max_length)[0]

    train_encoded, test_encoded = encode(train_rows), encode(test_rows)
    order = torch.randperm(len(train_encoded), generator=torch.Generator().manual_seed(args.seed)).tolist()
    train_batches = peft_methods.make_batches(
        [train_encoded[i] for i in order], args.batch_size, tokenizer.pad_token_id
    )
    eval_batches = peft_methods.make_batches(test_encoded, 50, tokenizer.pad_token_id)
    validation_batches = (
        peft_methods.make_batches(encode(validation_rows), 50, tokenizer.pad_token_id) if args.fit_lr else []
    )

    def run(method: str, lr: float | None) -> tuple:
        env.seed_everything(args.seed)
        name, r, alpha, tokens = parse_method(method, args)
        model = peft_methods.prepare_method(
            name,
            copy.deepcopy(base),
            r=r,
            alpha=alpha,
            dropout=args.lora_dropout,
            trainable_tokens=chat_token_ids(tokenizer) if tokens else (),
        )
        lr = lr if lr is not None else peft_methods.DEFAULT_LR[name]
        model, res = peft_methods.train_and_measure(
            method,
            model,
            train_batches,
            eval_batches,
            args.max_steps,
            lr=lr,
            seed=args.seed,
            schedule=args.schedule,
            warmup_steps=args.warmup_steps,
        )
        return model, res

    base_accuracy = sft.score_tasks(base, tokenizer, test_rows).by_task()
    results, fitted = [], {}
    for method in methods:
        if not args.fit_lr:
            model, res = run(method, None)
            res.accuracy = sft.task_accuracy(model, tokenizer, test_rows)
            print(
                f"{method}: loss {res.eval_loss_before:.3f} -> {res.eval_loss_after:.3f}, "
                f"accuracy {res.accuracy:.3f}, {res.seconds_per_step:.3f} s/step",
                flush=True,
            )
            results.append(res)
            continue
        grid = []
        for lr in FIT_GRID[method]:
            model, res = run(method, lr)
            test = sft.score_tasks(model, tokenizer, test_rows).by_task()
            point = {
                "lr": lr,
                "validation_accuracy": round(sft.task_accuracy(model, tokenizer, validation_rows), 4),
                "validation_loss": round(peft_methods.eval_loss(model, validation_batches), 4),
                "test_loss": round(res.eval_loss_after, 4),
                "test_accuracy": {k: round(v, 4) for k, v in test.items()},
                "seconds_per_step": round(res.seconds_per_step, 3),
            }
            print(
                f"{method} lr {lr:g}: validation {point['validation_accuracy']:.3f} "
                f"(loss {point['validation_loss']:.3f}), test {test['all']:.3f}",
                flush=True,
            )
            grid.append((point, res))
        point, res = max(grid, key=lambda g: (g[0]["validation_accuracy"], -g[0]["validation_loss"]))
        res.accuracy = point["test_accuracy"]["all"]
        results.append(res)
        fitted[method] = {
            "lr": point["lr"],
            "trainable_params": res.trainable_params,
            "total_params": res.total_params,
            "trainable_pct": round(100 * res.trainable_params / res.total_params, 3),
            "test_accuracy": point["test_accuracy"],
            "test_loss": point["test_loss"],
            "grid": [g[0] for g in grid],
        }

    table = peft_methods.format_table(results, rounded=False)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rates = (
        (" (each method's fitted learning rate: " + ", ".join(f"{m} {f['lr']:g}" for m, f in fitted.items()) + ")")
        if fitted
        else ""
    )
    header = (
        f"model {args.model}, {args.max_steps} steps x batch {args.batch_size}, {args.schedule} schedule, "
        f"device {device}, base accuracy {base_accuracy['all']:.3f}{rates}\n\n"
    )
    (out / "bench_peft.md").write_text(header + table + "\n", encoding="utf-8")
    payload = {
        "args": vars(args),
        "device": str(device),
        "base_accuracy": base_accuracy["all"],
        "results": [res.as_row() | {"losses": res.losses} for res in results],
    }
    (out / "bench_peft.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if args.record:
        from course_utils.train import file_sha256

        record = {
            "command": "python scripts/bench_peft.py " + shlex.join(sys.argv[1:]),
            "args": vars(args),
            "fit_grid": {m: list(FIT_GRID[m]) for m in methods},
            "data_sha256": {name: file_sha256(DATA_DIR / name) for name in ("tasks_train.jsonl", "tasks_test.jsonl")},
            "num_train_rows": len(train_rows),
            "num_validation_rows": len(validation_rows),
            "num_test_rows": len(test_rows),
            "base_accuracy": {k: round(v, 4) for k, v in base_accuracy.items()},
            "methods": fitted,
        }
        Path(args.record).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.record}")
    print()
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
