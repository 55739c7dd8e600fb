"""Pretrain (or continue pretraining) a causal LM on a JSONL/text corpus, in the style of ``run_clm.py``.

The same code runs on one CPU, on N GPUs, and under DeepSpeed; only the launcher changes:

    python scripts/pretrain.py --output_dir runs/pretrain --max_steps 200           # one process (CPU or GPU)
    torchrun --nproc_per_node 2 scripts/pretrain.py --output_dir runs/ddp ...        # DDP, N processes
    accelerate launch --num_processes 2 scripts/pretrain.py --output_dir runs/acc ...
    deepspeed --num_gpus 2 scripts/pretrain.py --deepspeed configs/ds_config_zero2.json --output_dir runs/z2 ...
    python scripts/pretrain.py configs/pretrain_tiny.json                            # all arguments from a file

See ``scripts/pretrain.sh`` for full commands and ``configs/README.md`` for the DeepSpeed fields. The data and
model code is ``course_utils`` (the same functions as notebook 05): ``data.tokenize_and_pack`` packs the
corpus into blocks, ``models.tiny_config`` / ``AutoConfig`` builds the model, ``train.write_metadata`` records
how the saved model was made.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

import torch

from course_utils import DATA_DIR, env

# Offline unless HF_HUB_OFFLINE=0 is set. On CPU, DS_ACCELERATOR=cpu must be set before deepspeed is imported;
# on a GPU machine DeepSpeed finds the GPU itself.
env.setup_offline(
    offline=os.environ.get("HF_HUB_OFFLINE", "1") != "0", ds_accelerator=None if torch.cuda.is_available() else "cpu"
)


@dataclass
class ModelArguments:
    """Which model to train: a fresh one from a config, or existing weights to continue pretraining."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Weights to continue pretraining from (hub name or folder). Leave unset to train from "
            "scratch from --config_name."
        },
    )
    config_name: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' (the workbook's preset) or a hub name / folder whose config.json is used to "
            "build a randomly initialised model (e.g. Qwen/Qwen2.5-0.5B)."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config overrides for a model trained from scratch, e.g. "
            "'hidden_size=256,num_hidden_layers=8'."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (hub name or folder). Default: the committed tiny tokenizer for "
            "--config_name tiny, else --model_name_or_path or --config_name."
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa', 'eager' or 'flash_attention_2'."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run Python code shipped with a hub model. Keep False unless you have read that code."},
    )


@dataclass
class DataTrainingArguments:
    """Which corpus, and how to cut it into blocks."""

    train_files: list[str] = field(
        default_factory=lambda: [str(DATA_DIR / "pretrain_corpus.jsonl")],
        metadata={"help": "JSONL files with a text field (or .txt files, one document per line)."},
    )
    text_field: str = field(default="text", metadata={"help": "Name of the text field in the JSONL files."})
    block_size: int = field(default=128, metadata={"help": "Length of the packed training blocks (tokens)."})
    validation_split_percentage: float = field(
        default=2.0, metadata={"help": "Percentage of packed blocks held out for evaluation / perplexity."}
    )
    max_documents: int | None = field(
        default=None, metadata={"help": "Read only the first N documents (quick runs and tests)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most N training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most N evaluation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})


def parse_args(argv: list[str] | None = None):
    """Parse the three dataclasses from the command line, or from one .json / .yaml file."""
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer that goes with the chosen model (``course_utils.models``: pad token checked)."""
    from course_utils import models

    name = model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name
    if model_args.trust_remote_code:
        raise SystemExit("trust_remote_code=True would execute code shipped with the checkpoint; not supported here")
    return models.load_tokenizer(name, template="model")


def build_model(model_args: ModelArguments, tokenizer, seed: int):
    """From scratch (``--config_name``) or from weights (``--model_name_or_path``), fp32 master weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from course_utils import models

    if model_args.model_name_or_path:
        model, _ = models.load_model_and_tokenizer(
            model_args.model_name_or_path, template="model", attn_implementation=model_args.attn_implementation
        )
        return model
    overrides = {}
    if model_args.config_overrides:
        for item in model_args.config_overrides.split(","):
            key, value = item.split("=", 1)
            overrides[key.strip()] = json.loads(value)
    if model_args.config_name == "tiny":
        config = models.tiny_config(tokenizer, **overrides)
    else:
        config = models.load_config(model_args.config_name)
        for key, value in overrides.items():
            setattr(config, key, value)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
    config._attn_implementation = model_args.attn_implementation
    config.dtype = torch.float32
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)


def load_corpus(data_args: DataTrainingArguments):
    """The JSONL (or ``.txt``) files, validated by ``data.load_corpus``, optionally truncated to ``max_documents``."""
    from course_utils import data

    return data.load_corpus(list(data_args.train_files), limit=data_args.max_documents)


def main(argv: list[str] | None = None) -> dict:
    import datasets
    import transformers
    from transformers import Trainer, default_data_collator
    from transformers.trainer_utils import get_last_checkpoint

    from course_utils import data, train

    model_args, data_args, training_args = parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_warning()
    if training_args.disable_tqdm:
        transformers.utils.logging.disable_progress_bar()
    env.seed_everything(training_args.seed)
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every parameter is used: skip DDP's extra graph walk

    tokenizer = load_tokenizer(model_args)
    # Tokenise once on the main process; the other ranks then read the cached result.
    with training_args.main_process_first(desc="tokenise and pack"):
        corpus = load_corpus(data_args)
        packed = data.tokenize_and_pack(
            corpus,
            tokenizer,
            block_size=data_args.block_size,
            text_field=data_args.text_field,
            num_proc=data_args.preprocessing_num_workers,
        )
    split = packed.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=training_args.seed)
    train_ds, eval_ds = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        train_ds = train_ds.select(range(min(data_args.max_train_samples, len(train_ds))))
    if data_args.max_eval_samples is not None:
        eval_ds = eval_ds.select(range(min(data_args.max_eval_samples, len(eval_ds))))

    model = build_model(model_args, tokenizer, training_args.seed)
    if training_args.process_index == 0:
        print(
            f"[pretrain] world_size={training_args.world_size} model={model.num_parameters():,} params "
            f"train_blocks={len(train_ds)} eval_blocks={len(eval_ds)} block_size={data_args.block_size} "
            f"global_batch={training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size}",
            flush=True,
        )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds if training_args.do_train or not training_args.do_eval else None,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=default_data_collator,  # packed blocks all have the same length: just stack them
    )
    env.quiet_trainer(trainer)

    results: dict = {}
    checkpoint = training_args.resume_from_checkpoint  # a checkpoint folder, or "last" for the newest in output_dir
    if checkpoint in ("last", "true", "True"):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no checkpoint-* in {training_args.output_dir}")
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # model + tokenizer (safetensors); under ZeRO-3 gathers the 16-bit weights first
    trainer.save_state()  # trainer_state.json with the log history
    results.update(train_result.metrics)
    metrics = trainer.evaluate()
    metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
    results.update(metrics)
    results["train_losses"] = train.log_history(trainer)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", {k: v for k, v in results.items() if k != "train_losses"})
        train.write_metadata(
            training_args.output_dir,
            arguments={"model": model_args, "data": data_args, "training": training_args.to_dict()},
            data_files=data_args.train_files,
            extra={
                "command": " ".join(["scripts/pretrain.py", *(sys.argv[1:] if argv is None else argv)]),
                "world_size": training_args.world_size,
                "num_parameters": model.num_parameters(),
                "train_losses": results["train_losses"],
                "eval_loss": round(metrics["eval_loss"], 4),
            },
        )
        print(
            "[pretrain] "
            + json.dumps(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items() if k != "train_losses"}
            ),
            flush=True,
        )
    torch.distributed.barrier() if torch.distributed.is_initialized() else None
    return results


if __name__ == "__main__":
    main()
