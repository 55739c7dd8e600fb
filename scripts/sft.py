"""Supervised fine-tuning (SFT) from a LLaMA-Factory-style YAML file, with assistant-only loss.

    python scripts/sft.py configs/sft_tiny.yaml                      # rebuilds data_samples/tiny_sft (CPU, ~1 min)
    python scripts/sft.py configs/sft_tiny.yaml --max_steps 20 --output_dir /tmp/sft_smoke
    python scripts/sft.py configs/sft_lora_example.yaml              # LoRA on the tiny base
    python scripts/sft.py configs/sft_lora_example.yaml --online --model_name_or_path Qwen/Qwen2.5-0.5B --lora_target all \
        --output_dir runs/qwen_lora                                   # a hub model on a GPU (needs a network)

The YAML keys are LLaMA-Factory's where they exist (``stage``, ``model_name_or_path``, ``finetuning_type``,
``template``, ``dataset``, ``dataset_dir``, ``cutoff_len``, ``train_on_prompt``, ``lora_target``, ``lora_rank``,
``lora_alpha``, ``lora_dropout``, ``max_samples``) plus any ``transformers.TrainingArguments`` field
(``output_dir``, ``learning_rate``, ``per_device_train_batch_size``, ``max_steps``, ...). As in Hugging Face's
``run_clm.py`` the arguments are dataclasses parsed by ``HfArgumentParser``; ``--key value`` after the YAML file
overrides it. The data pipeline is what notebook 06 teaches: rows of any format -> conversations
(``course_utils.chat_formats``) -> ChatML tokens with labels -100 outside the assistant replies (``course_utils.sft``)
-> ``Trainer``. The output folder gets safetensors
weights (a LoRA adapter, plus merged weights with ``merge_lora: true``), the tokenizer, ``metadata.json`` and a short
model card.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from course_utils import DATA_DIR, PROJECT_ROOT, env

if __name__ == "__main__":  # before transformers is imported; importing this file (tests, notebook 11) changes nothing
    env.setup_offline(offline=False) if "--online" in sys.argv else env.setup_offline()


@dataclass
class ModelArguments:
    """Which model and chat template (LLaMA-Factory: ``model_name_or_path``, ``template``)."""

    model_name_or_path: str = field(
        default="tiny-base",
        metadata={"help": "`tiny-base` (committed), `tiny` (random init), a local folder or a hub name"},
    )
    template: str = field(
        default="chatml",
        metadata={
            "help": "`chatml`/`qwen`: the course's ChatML template with {%% generation %%} markers; "
            "`tokenizer`: keep the tokenizer's own template (must have generation markers)"
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "never needed here; True runs repo code"})


@dataclass
class DataArguments:
    """Which data (LLaMA-Factory: ``dataset``, ``dataset_dir``, ``cutoff_len``, ``train_on_prompt``...)."""

    dataset: str = field(default="tasks_train", metadata={"help": "comma-separated names in dataset_info.json"})
    dataset_dir: str = field(default=str(DATA_DIR), metadata={"help": "folder holding the data files"})
    dataset_info: str = field(default=str(PROJECT_ROOT / "configs" / "dataset_info.json"))
    cutoff_len: int = field(default=256, metadata={"help": "max tokens per conversation (longer: truncated)"})
    max_samples: int | None = field(default=None, metadata={"help": "read at most this many rows per dataset"})
    train_on_prompt: bool = field(default=False, metadata={"help": "True: loss on every token, not only replies"})
    eval_tasks: str | None = field(
        default=str(DATA_DIR / "tasks_test.jsonl"),
        metadata={"help": "held-out checkable tasks: accuracy before and after (empty to skip)"},
    )
    max_eval_samples: int | None = None
    max_new_tokens: int = 16


@dataclass
class FinetuningArguments:
    """How to fine-tune (LLaMA-Factory: ``stage``, ``finetuning_type``, ``lora_*``)."""

    stage: str = field(default="sft", metadata={"help": "only `sft` here (preference stages: notebooks 09-10)"})
    finetuning_type: str = field(default="full", metadata={"help": "`full` or `lora`"})
    lora_target: str = field(default="q_proj,v_proj", metadata={"help": "comma-separated modules, or `all`"})
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_chat_tokens: bool = field(
        default=False,
        metadata={
            "help": "also train the embedding rows of <|im_start|> / <|im_end|> (PEFT trainable_token_indices): "
            "a base that never saw them in pretraining cannot learn to stop through LoRA alone"
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "LoRA only: save the merged full model in output_dir and the adapter in output_dir/adapter"},
    )
    stop_after_steps: int | None = field(
        default=None,
        metadata={
            "help": "stop after this many optimizer steps, keeping the learning-rate schedule of max_steps (the first "
            "steps of a long run, e.g. with --logging_steps 1: data_samples/sft_first_steps.json)"
        },
    )


#: Keys of the lecture slides' LLaMA-Factory YAML that LLaMA-Factory (and this script) does not have -> the real ones.
SEED_KEYS: dict[str, str] = {
    "train_file": "dataset: <name registered in dataset_info.json> (+ dataset_dir)",
    "val_file": "eval_dataset: <name> (LLaMA-Factory; here eval_tasks: <file>) or val_size: 0.1",
    "bnb_4bit_quant_type": "quantization_bit: 4 (+ quantization_type: nf4, LLaMA-Factory's default)",
}


def parse_arguments(argv: list[str]) -> tuple:
    """``config.yaml [--key value ...]`` or plain ``--key value`` flags -> the four argument dataclasses.

    The ``TrainingArguments`` is built here, once, by ``HfArgumentParser`` and then passed to ``Trainer`` unchanged;
    the course's defaults (``env.trainer_defaults``: no checkpoints, precision by hardware, ...) sit under the YAML
    file and the command line, which override them.
    """
    import yaml
    from transformers import HfArgumentParser, TrainingArguments

    from course_utils import env

    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuningArguments, TrainingArguments))
    from_yaml = bool(argv) and argv[0].endswith((".yaml", ".yml"))
    source = argv[0] if from_yaml else "the command line"
    config = (yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8")) or {}) if from_yaml else {}
    rest = argv[1:] if from_yaml else list(argv)
    known = {f.name for cls in parser.dataclass_types for f in fields(cls)}
    while rest:
        key = rest.pop(0)
        if not key.startswith("--"):
            raise SystemExit(f"expected --key value{' after the YAML file' if from_yaml else ''}, got {key!r}")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
        elif rest and not rest[0].startswith("--"):
            value = rest.pop(0)
        else:
            value = "true"
        config[key] = yaml.safe_load(value)
    unknown = sorted(set(config) - known)
    if unknown:
        hints = "".join(f"\n  {key}: use {SEED_KEYS[key]}" for key in unknown if key in SEED_KEYS)
        raise SystemExit(f"unknown keys in {source}: {unknown}{hints}")
    if from_yaml:
        config.setdefault("output_dir", str(DATA_DIR / "tiny_sft"))
    _coerce_numbers(config, parser, source)
    seed = config.get("seed", TrainingArguments.seed)  # the data order follows the run's seed (data_seed)
    defaults = env.trainer_defaults("cpu" if config.get("use_cpu") else "auto", seed=seed)
    return parser.parse_dict({**defaults, **config})


def _coerce_numbers(config: dict, parser, source: str) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; turn such values into the field's number type."""
    types = {f.name: str(f.type) for cls in parser.dataclass_types for f in fields(cls)}
    for key, value in config.items():
        if not isinstance(value, str):
            continue
        for name, cast in (("float", float), ("int", int)):
            if re.search(rf"\b{name}\b", types[key]) and "str" not in types[key]:
                try:
                    config[key] = cast(value)
                except ValueError:
                    raise SystemExit(f"{source}: {key} must be a number ({name}), got {value!r}") from None
                break


def write_model_card(out: Path, metadata: dict) -> None:
    """A short README.md model card next to the weights."""
    acc = metadata.get("task_accuracy", {})
    ft = metadata["arguments"]["finetuning"]
    how = (
        "full fine-tuning"
        if ft["finetuning_type"] == "full"
        else f"LoRA r={ft['lora_rank']}, alpha={ft['lora_alpha']} on `{ft['lora_target']}` linear layers"
        + (", merged into the full weights (the adapter alone is in `adapter/`)" if ft.get("merge_lora") else "")
    )
    lines = [
        f"# {out.name}",
        "",
        f"A tiny Qwen2-architecture chat model fine-tuned ({how}; SFT, loss on "
        + (
            "every token, prompt included"
            if metadata["arguments"]["data"]["train_on_prompt"]
            else "assistant replies only"
        )
        + ") by",
        f"`{metadata['command']}` from `{metadata['base_model']}` on {metadata['num_train_examples']} conversations",
        f"({metadata['arguments']['data']['dataset']}). Chat template: ChatML (`<|im_start|>role ... <|im_end|>`);",
        "generation stops at `<|im_end|>`. Trained on CPU in about "
        f"{metadata['seconds']:.0f} s. Data: the project's generated CC0 samples (`data_samples/README.md`).",
        "",
        "Use: `AutoModelForCausalLM.from_pretrained(path)`, `AutoTokenizer.from_pretrained(path)`,",
        "`course_utils.sft.generate_answers(...)` / `task_accuracy(...)`. A teaching artefact, not a useful assistant.",
        "",
        f"Held-out task accuracy (`tasks_test.jsonl`, greedy): before {acc.get('before', {}).get('all', 'n/a')}, "
        f"after {acc.get('after', {}).get('all', 'n/a')}.",
        "",
        "Limitations: ~1.5M parameters, tiny vocabulary (4,096 BPE tokens), knows only the generated fictional world.",
        "Licence: MIT (code) / CC0-1.0 (data).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    from course_utils import chat_formats, models, sft, tasks, train
    from course_utils.tokenizer import IM_END, IM_START, has_generation_markers, use_training_template

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a != "--online"]
    model_args, data_args, ft_args, training_args = parse_arguments(argv)
    if ft_args.stage != "sft":
        raise SystemExit(f"stage {ft_args.stage!r}: this script only does `sft`")
    if ft_args.finetuning_type not in ("full", "lora"):
        raise SystemExit(f"finetuning_type must be `full` or `lora`, not {ft_args.finetuning_type!r}")
    if model_args.trust_remote_code:
        raise SystemExit("trust_remote_code=True would execute code shipped with the checkpoint; not supported here")
    env.seed_everything(training_args.seed)
    started = time.time()

    model, tokenizer = models.load_model_and_tokenizer(
        model_args.model_name_or_path, seed=training_args.seed, template="model"
    )
    if model_args.template in ("chatml", "qwen"):
        for special in (IM_START, IM_END):
            if special not in tokenizer.get_vocab():
                raise SystemExit(f"template {model_args.template!r} needs {special} in the vocabulary")
        tokenizer.chat_template = None  # the project's ChatML (generation markers, <|im_end|> as EOS)
        use_training_template(tokenizer)
        models.sync_generation_config(model, tokenizer)
        method = "scratch"
    elif model_args.template == "tokenizer":
        if not has_generation_markers(tokenizer.chat_template):
            raise SystemExit(
                "template `tokenizer`: the tokenizer's chat template has no {% generation %} markers "
                "(it would train 0 tokens); use `template: chatml`"
            )
        method = "template"
    else:
        raise SystemExit(f"unknown template {model_args.template!r} (chatml, qwen, tokenizer)")

    rows, reports = chat_formats.load_named_datasets(
        data_args.dataset, data_args.dataset_info, data_args.dataset_dir, on_error="skip", limit=data_args.max_samples
    )
    for report in reports:
        print(report)
    eval_rows: list[dict] = []
    if data_args.eval_tasks:
        eval_rows = tasks.load_task_rows(data_args.eval_tasks, limit=data_args.max_eval_samples or None)
    resolved = env.pick_device("cpu" if training_args.use_cpu else "auto")
    model.to(resolved)

    def accuracy() -> dict:
        return sft.score_tasks(model, tokenizer, eval_rows, max_new_tokens=data_args.max_new_tokens).by_task()

    before = {k: round(v, 4) for k, v in accuracy().items()} if eval_rows else {}
    if before:
        print("task accuracy before SFT", before)

    if ft_args.finetuning_type == "lora":
        model = sft.add_lora(model, tokenizer, asdict(ft_args), seed=training_args.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    ta = training_args
    result = sft.train_sft(
        model,
        tokenizer,
        rows,
        ta,
        train_on="all" if data_args.train_on_prompt else "assistant",
        max_length=data_args.cutoff_len,
        method=method,
        stop_after_steps=ft_args.stop_after_steps,
    )
    print(result.report)
    print("losses", result.losses)
    model = result.model
    after = {k: round(v, 4) for k, v in accuracy().items()} if eval_rows else {}
    if after:
        print("task accuracy after SFT", after)

    out = Path(ta.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ft_args.finetuning_type == "lora":
        # the adapter alone (a few hundred kB); with merge_lora the folder itself holds the merged full model, which
        # loads like any checkpoint (AutoModelForCausalLM), and the adapter moves to output_dir/adapter
        model.save_pretrained(str(out / "adapter" if ft_args.merge_lora else out))
        if ft_args.merge_lora:
            tokenizer.save_pretrained(str(out / "adapter"))
            model = model.merge_and_unload()
    if ft_args.finetuning_type == "full" or ft_args.merge_lora:
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        model.generation_config.eos_token_id = [im_end]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

    data_files = [
        Path(data_args.dataset_dir) / entry["file_name"]
        for name, entry in chat_formats.load_dataset_info(data_args.dataset_info).items()
        if name in data_args.dataset.split(",")
    ]
    arguments = {
        "model": asdict(model_args),
        "data": {
            k: (Path(v).name if k in ("dataset_dir", "dataset_info", "eval_tasks") and v else v)
            for k, v in asdict(data_args).items()
        },
        "finetuning": asdict(ft_args),
        "training": {
            k: getattr(ta, k)
            for k in (
                "learning_rate",
                "per_device_train_batch_size",
                "max_steps",
                "num_train_epochs",
                "warmup_steps",
                "weight_decay",
                "seed",
                "gradient_accumulation_steps",
            )
        }
        | {"lr_scheduler_type": str(getattr(ta.lr_scheduler_type, "value", ta.lr_scheduler_type))},
    }
    path = train.write_metadata(
        out,
        arguments,
        data_files,
        extra={
            "command": "python scripts/sft.py " + " ".join(argv),
            "base_model": model_args.model_name_or_path,
            "num_train_examples": result.num_examples,
            "dropped": dict(result.report.dropped),
            "trainable_parameters": trainable,
            "train_loss_history": result.losses,
            "final_train_loss": result.losses[-1][1] if result.losses else None,  # the last logged loss
            "mean_train_loss": round(result.train_loss, 4),  # Trainer's training_loss: the mean over the run
            "task_accuracy": {"before": before, "after": after},
            "seconds": round(time.time() - started, 1),  # wall clock: loading, training, both evaluations, saving
            "device": str(resolved),
        },
    )
    metadata = json.loads(path.read_text(encoding="utf-8"))
    write_model_card(out, metadata)
    print(json.dumps({k: metadata[k] for k in ("final_train_loss", "task_accuracy", "seconds")}, ensure_ascii=False))
    return metadata


if __name__ == "__main__":
    main()
