"""Throughput of pretraining: Trainer vs the hand-written loop vs a bare forward/backward loop, same batches.

    python scripts/bench_pretrain.py                       # tiny preset on CPU (2 threads), block 128, batch 16
    python scripts/bench_pretrain.py --preset 100m --steps 30 --batch_size 16 --block_size 1024   # on a GPU

Prints one JSON line per method with tokens/s, and the overhead of Trainer and of the hand loop over the bare
loop (the issue's budget: at most 10%). On CUDA it also reports model FLOPs utilisation,
MFU = 6 * N * tokens/s / peak FLOP/s (N = parameters, the tied embedding counted once as the LM head;
attention's own FLOPs left out; bf16 dense peak of the GPU).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from course_utils import DATA_DIR, env

env.setup_offline()

#: bf16 dense peak FLOP/s by GPU name fragment (no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "T4": 65e12}


@dataclass
class BenchArguments:
    preset: str = field(default="tiny", metadata={"help": "'tiny' or '100m' (Qwen2 shape, ~100M parameters)"})
    steps: int = 20
    warmup: int = 3
    batch_size: int = 16
    block_size: int = 128
    threads: int = 2
    methods: str = "bare,loop,trainer"


def make_model(preset: str, tokenizer, device, dtype):
    from transformers import AutoModelForCausalLM

    from course_utils import models

    if preset == "tiny":
        config = models.tiny_config(tokenizer)
    else:  # ~100M parameters without counting a 32k embedding twice (tied)
        config = models.tiny_config(
            tokenizer,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=4096,
            vocab_size=max(len(tokenizer), 32000),
        )
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)


def main() -> None:
    import datasets
    import torch
    from transformers import HfArgumentParser, Trainer, TrainingArguments, default_data_collator

    from course_utils import data, train
    from course_utils.tokenizer import load_tiny_tokenizer

    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    device = env.pick_device("auto")
    precision = env.pick_precision(device)
    tokenizer = load_tiny_tokenizer()
    corpus = data.load_corpus(DATA_DIR / "pretrain_corpus.jsonl")
    packed = data.tokenize_and_pack(corpus, tokenizer, block_size=args.block_size)
    n_blocks = (args.steps + args.warmup) * args.batch_size
    while len(packed) < n_blocks:
        packed = datasets.concatenate_datasets([packed, packed])
    packed = packed.select(range(n_blocks))
    tokens_timed = args.steps * args.batch_size * args.block_size
    autocast = precision.dtype if (precision.bf16 or precision.fp16) else None  # bf16 (>= 8.0) or fp16 + scaler
    results = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if "bare" in args.methods:
        model = make_model(args.preset, tokenizer, device, None)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type in ("cpu", "cuda"))
        scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)  # a no-op unless fp16
        stream = train.iter_batches(packed, args.batch_size, seed=0)
        batches = [next(stream) for _ in range(args.steps + args.warmup)]
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        for i, batch in enumerate(batches):
            if i == args.warmup:
                sync()
                started = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        sync()
        results["bare"] = tokens_timed / (time.perf_counter() - started)
        n_params = model.num_parameters()  # tied embeddings: counted once, as the LM head's matmul
        del model, optimizer

    if "loop" in args.methods:
        model = make_model(args.preset, tokenizer, device, None)
        marks = {}

        def mark(entry):
            if entry["step"] == args.warmup:
                sync()
                marks["start"] = time.perf_counter()

        train.train_loop(
            model,
            packed,
            max_steps=args.steps + args.warmup,
            batch_size=args.batch_size,
            learning_rate=1e-3,
            device=device,
            autocast_dtype=autocast,
            callback=mark,
        )
        sync()
        results["loop"] = tokens_timed / (time.perf_counter() - marks["start"])
        del model

    if "trainer" in args.methods:
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if state.global_step == args.warmup:
                    sync()
                    self.start = time.perf_counter()

        clock = Clock()
        model = make_model(args.preset, tokenizer, device, None)
        targs = TrainingArguments(
            output_dir=str(env.cache_dir() / "bench_pretrain"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps + args.warmup,
            learning_rate=1e-3,
            logging_steps=10_000,
            dataloader_drop_last=True,
            **{**env.trainer_defaults(device), "disable_tqdm": True},  # no bar drawn inside the timed loop
        )
        trainer = Trainer(
            model=model, args=targs, train_dataset=packed, data_collator=default_data_collator, callbacks=[clock]
        )
        env.quiet_trainer(trainer)
        trainer.train()
        sync()
        results["trainer"] = tokens_timed / (time.perf_counter() - clock.start)
        del model, trainer

    report = {
        "preset": args.preset,
        "device": str(device),
        "precision": precision.reason,
        "batch": args.batch_size,
        "block": args.block_size,
        "steps_timed": args.steps,
    }
    report.update({f"{name}_tokens_per_s": round(value) for name, value in results.items()})
    if "bare" in results:
        for name in ("loop", "trainer"):
            if name in results:
                report[f"{name}_overhead_vs_bare"] = round(results["bare"] / results[name] - 1, 3)
        if device.type == "cuda":
            gpu = torch.cuda.get_device_name(0)
            peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
            report["gpu"] = gpu
            report["params"] = n_params
            if peak:
                for name, value in results.items():
                    report[f"{name}_mfu"] = round(6 * n_params * value / peak, 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
