"""Rebuild the committed tiny base model and tokenizer in ``data_samples/tiny_base``.

    python scripts/make_tiny_base.py                 # the exact command that made the committed files
    python scripts/make_tiny_base.py --max_steps 50  # a quick smoke run into another folder with --output_dir

Trains the byte-level BPE tokenizer on ``data_samples/pretrain_corpus.jsonl``, packs the corpus into
blocks, and pretrains the ``tiny`` preset with ``Trainer`` (cosine schedule, warm-up, clipping) on CPU.
Weights are saved as safetensors next to a ``metadata.json`` (``train.write_metadata``: data fingerprint, arguments, git commit,
versions, the loss history).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils import DATA_DIR, env

env.setup_offline()


@dataclass
class Arguments:
    """Arguments of the tiny base run (``HfArgumentParser`` turns them into command-line flags)."""

    corpus: str = field(default=str(DATA_DIR / "pretrain_corpus.jsonl"), metadata={"help": "JSONL with `text`"})
    output_dir: str = field(default=str(DATA_DIR / "tiny_base"), metadata={"help": "where to save"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size"})
    block_size: int = field(default=128, metadata={"help": "packed sequence length"})
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_steps: int = 3000
    warmup_steps: int = 100
    seed: int = 0


def main() -> None:
    import torch
    from transformers import HfArgumentParser, Trainer, TrainingArguments, default_data_collator

    from course_utils import data, models, train
    from course_utils.tokenizer import ENDOFTEXT, iter_corpus_texts, train_tiny_tokenizer

    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses()
    env.seed_everything(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    tokenizer = train_tiny_tokenizer(iter_corpus_texts(Path(args.corpus)), vocab_size=args.vocab_size)
    corpus = data.load_corpus(args.corpus)
    packed = data.tokenize_and_pack(corpus, tokenizer, block_size=args.block_size)
    split = packed.train_test_split(test_size=0.02, seed=args.seed)
    model = models.build_model("tiny", tokenizer, seed=args.seed)
    print(
        f"tokenizer {len(tokenizer)} tokens; {len(packed)} blocks of {args.block_size}; "
        f"model {model.num_parameters():,} parameters"
    )

    training_args = TrainingArguments(
        output_dir=str(Path(env.cache_dir()) / "tiny_base_run"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=0.1,
        max_grad_norm=1.0,
        max_steps=args.max_steps,
        logging_steps=100,
        seed=args.seed,
        # no checkpoints or reports, data order by the seed, the hardware's precision (fp32 on the CPU that built it)
        **env.trainer_defaults("cuda" if torch.cuda.is_available() else "cpu", seed=args.seed),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        data_collator=default_data_collator,
    )
    env.quiet_trainer(trainer)
    result = trainer.train()
    metrics = trainer.evaluate()
    losses = [(step, round(loss, 4)) for step, loss in train.log_history(trainer)]
    print("losses", losses)
    print(f"eval loss {metrics['eval_loss']:.4f}  perplexity {torch.exp(torch.tensor(metrics['eval_loss'])):.2f}")

    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    path = train.write_metadata(
        out,
        arguments=asdict(args) | {"corpus": Path(args.corpus).name, "output_dir": Path(args.output_dir).name},
        data_files=[args.corpus],
        extra={
            "command": "python scripts/make_tiny_base.py " + " ".join(sys.argv[1:]),
            "num_parameters": model.num_parameters(),
            "train_loss_history": losses,
            "final_train_loss": losses[-1][1],  # the last logged loss
            "mean_train_loss": round(result.training_loss, 4),  # Trainer's training_loss: the mean over the run
            "eval_loss": round(metrics["eval_loss"], 4),
            "seconds": round(time.time() - started, 1),
        },
    )
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
