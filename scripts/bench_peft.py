#!/usr/bin/env python
"""Measured comparison of fine-tuning methods on the workbook's SFT task (the table of notebook 07).

Full fine-tuning, LoRA (q,v and all linear layers), a bottleneck adapter, prefix tuning, prompt tuning and IA3,
each trained from the same base for ``--max_steps`` steps on ``data_samples/tasks_train.jsonl`` (ChatML,
assistant-only labels) and scored on ``tasks_test.jsonl`` by greedy generation. Measures trainable parameters,
optimizer-state bytes, gradient/activation bytes, seconds per step, held-out loss and accuracy.

    python scripts/bench_peft.py --max_steps 40
    python scripts/bench_peft.py --model Qwen/Qwen2.5-0.5B --methods lora,prompt --max_steps 200 --device cuda

Writes ``<output_dir>/bench_peft.json`` and ``bench_peft.md`` and prints the Markdown table.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_utils import env  # noqa: E402

env.setup_offline()


@dataclass
class BenchArguments:
    model: str = field(default="tiny-base", metadata={"help": "tiny-base, tiny, or a hub name / local folder"})
    methods: str = field(default=",".join(("full", "lora", "lora-all", "adapter", "prefix", "prompt", "ia3")),
                         metadata={"help": "comma-separated methods (course_utils.lora.METHODS)"})
    max_steps: int = field(default=40, metadata={"help": "training steps per method"})
    batch_size: int = field(default=16)
    max_length: int = field(default=64)
    n_test: int = field(default=100, metadata={"help": "held-out rows scored by generation"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1)
    device: str = field(default="auto")
    seed: int = field(default=0)
    output_dir: str = field(default="build/bench_peft")


def main() -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    import torch

    from course_utils import DATA_DIR, lora, models, sft

    env.seed_everything(args.seed)
    device = env.pick_device(args.device)
    base, tokenizer = models.load_model_and_tokenizer(args.model, seed=args.seed)
    base.to(device).eval()

    train_rows = sft.load_task_rows(DATA_DIR / "tasks_train.jsonl")
    test_rows = sft.load_task_rows(DATA_DIR / "tasks_test.jsonl")
    test_rows = test_rows[: args.n_test]
    train_encoded, _ = sft.encode_rows([sft.task_to_messages(r) for r in train_rows], tokenizer, args.max_length)
    test_encoded, _ = sft.encode_rows([sft.task_to_messages(r) for r in test_rows], tokenizer, args.max_length)
    order = torch.randperm(len(train_encoded), generator=torch.Generator().manual_seed(args.seed)).tolist()
    train_batches = lora.make_batches([train_encoded[i] for i in order], args.batch_size, tokenizer.pad_token_id)
    eval_batches = lora.make_batches(test_encoded, 50, tokenizer.pad_token_id)

    results = []
    base_accuracy = sft.task_accuracy(base, tokenizer, test_rows)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        env.seed_everything(args.seed)
        model = lora.prepare_method(method, copy.deepcopy(base), r=args.r, alpha=args.alpha,
                                    dropout=args.lora_dropout)
        model, res = lora.train_and_measure(method, model, train_batches, eval_batches, args.max_steps,
                                            seed=args.seed)
        res.accuracy = sft.task_accuracy(model, tokenizer, test_rows)
        results.append(res)
        print(f"{method}: loss {res.eval_loss_before:.3f} -> {res.eval_loss_after:.3f}, "
              f"accuracy {res.accuracy:.3f}, {res.seconds_per_step:.3f} s/step", flush=True)

    table = lora.format_table(results, rounded=False)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"model {args.model}, {args.max_steps} steps x batch {args.batch_size}, device {device}, "
              f"base accuracy {base_accuracy:.3f}\n\n")
    (out / "bench_peft.md").write_text(header + table + "\n", encoding="utf-8")
    payload = {"args": vars(args), "device": str(device), "base_accuracy": base_accuracy,
               "results": [res.as_row() | {"losses": res.losses} for res in results]}
    (out / "bench_peft.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print()
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
