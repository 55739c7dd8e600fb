"""Benchmark the batching strategies of notebook 03: padding fraction and training tokens per second.

    python scripts/bench_batching.py                              # tiny-base, 512 SFT conversations, CPU
    python scripts/bench_batching.py --num_examples 800 --repeats 3 --output_json build/bench_batching.json
    python scripts/bench_batching.py --model Qwen/Qwen2.5-0.5B --device cuda --max_length 1024   # with a network

Every strategy trains the *same* freshly loaded model for one pass over the *same* tokenised conversations
(``data_samples/sft_messages.jsonl``, ChatML, prompt masked) and reports:

* padding %          padding positions / all positions computed;
* real tokens/s      non-padding tokens trained per second (forward + backward + AdamW step);
* positions/s        all positions (padding included) per second: what the hardware actually processes.

Timings depend on the machine and its load: compare strategies within one run. The first strategy is
preceded by an untimed warm-up pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils import DATA_DIR, env

env.setup_offline()


@dataclass
class Arguments:
    """Arguments of the benchmark (``HfArgumentParser`` turns them into command-line flags)."""

    model: str = field(default="tiny-base", metadata={"help": "tiny | tiny-base | a hub name / local folder"})
    data: str = field(default=str(DATA_DIR / "sft_messages.jsonl"), metadata={"help": "JSONL with `messages`"})
    num_examples: int = field(default=512, metadata={"help": "conversations used (the first N)"})
    max_length: int = field(default=256, metadata={"help": "truncation length = pad-to length = pack block"})
    batch_size: int = 16
    learning_rate: float = 1e-3
    repeats: int = field(default=1, metadata={"help": "timed passes per strategy (the median is reported)"})
    strategies: str = field(default="all", metadata={"help": "comma-separated subset of collate.STRATEGIES"})
    device: str = "auto"
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    seed: int = 0
    output_json: str | None = field(default=None, metadata={"help": "also write the table as JSON here"})


def main() -> None:
    import statistics

    import torch
    from transformers import HfArgumentParser

    from course_utils import chat_formats, collate, models, sft

    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses()
    torch.set_num_threads(args.threads)
    env.seed_everything(args.seed)
    device = env.pick_device(args.device)

    _, tokenizer = models.load_model_and_tokenizer(args.model)
    rows, report = chat_formats.load_sft_rows(args.data)
    examples, drops = sft.encode_rows(rows[: args.num_examples], tokenizer, max_length=args.max_length)
    print(report)
    print(drops)
    strategies = collate.STRATEGIES if args.strategies == "all" else tuple(args.strategies.split(","))

    results = []
    warmed_up = False
    for strategy in strategies:
        built = collate.build_batches(
            examples, strategy, args.batch_size, tokenizer.pad_token_id, args.max_length, seed=args.seed
        )
        batches = [{k: v.to(device) for k, v in batch.items()} for batch in built.batches]
        if not warmed_up:
            model, _ = models.load_model_and_tokenizer(args.model, device=device)
            collate.time_training(model, batches[:3], args.learning_rate)
            warmed_up = True
        times = []
        for _ in range(args.repeats):
            model, _ = models.load_model_and_tokenizer(args.model, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(collate.time_training(model, batches, args.learning_rate))
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds = statistics.median(times)
        results.append(
            {
                "strategy": strategy,
                "batches": len(batches),
                "real_tokens": built.real_tokens,
                "positions": built.positions,
                "padding_pct": round(100 * built.padding_fraction, 1),
                "seconds": round(seconds, 2),
                "real_tokens_per_s": round(built.real_tokens / seconds),
                "positions_per_s": round(built.positions / seconds),
            }
        )
        print(json.dumps(results[-1]), flush=True)

    header = f"{'strategy':<22}{'batches':>8}{'padding %':>11}{'real tok/s':>12}{'pos/s':>10}{'seconds':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r['strategy']:<22}{r['batches']:>8}{r['padding_pct']:>11}{r['real_tokens_per_s']:>12}"
            f"{r['positions_per_s']:>10}{r['seconds']:>9}"
        )
    if args.output_json:
        out = Path(args.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"args": asdict(args), "device": str(device), "torch": torch.__version__}
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
