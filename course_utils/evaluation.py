"""After training: evaluate any causal LM, save and reload it, merge adapters, verify each round trip.

Notebook 11 teaches these steps ("训练完成后的动作": save, convert, verify, version) on every model the
workbook trains; the functions work the same on a hub model such as ``Qwen/Qwen2.5-0.5B``.

* evaluation: :func:`heldout_blocks` packs the pretraining documents the tiny base never trained on
  (:func:`unseen_documents`: none of their tokens is in a training block of ``scripts/make_tiny_base.py``'s
  ``train_test_split(test_size=0.02, seed=0)``); :func:`evaluate_model` measures held-out perplexity, task accuracy on
  ``data_samples/tasks_test.jsonl`` (scored by ``tasks.score_answer``) and a few greedy generations;
  :func:`evaluation_table` / :func:`generations_table` put several models side by side;
* saving: :func:`save_model` (safetensors + tokenizer + ``metadata.json`` + model card), :func:`save_adapter`
  (the LoRA weights alone, by hand with ``get_peft_model_state_dict`` or with ``save_pretrained``),
  :func:`merge_adapter` (``merge_and_unload`` on a copy); every round trip is checked with :func:`max_abs_diff`
  of the logits;
* export to ONNX and GGUF: :mod:`course_utils.export` (what TensorRT would need: notebook 11);
* documentation: :func:`write_model_card` (README.md next to a saved model).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils import DATA_DIR, TINY_BASE_DIR, env

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import datasets
    import pandas
    import torch

#: Same packing and split as the pretraining scripts, so "held-out" means blocks the base never trained on.
HELDOUT_BLOCK_SIZE: int = 128
HELDOUT_TEST_SIZE: float = 0.02
HELDOUT_SEED: int = 0
#: Part of the key of :func:`unseen_documents`'s cached answer: bump it when the way the answer is computed changes.
_UNSEEN_CACHE_VERSION: int = 1

#: Default prompts shown side by side: two checkable tasks and one open question per language.
DEFAULT_GENERATION_PROMPTS: tuple[str, ...] = (
    "计算下面的算式。\n3 + 4",
    "Give the first letter of this word.\nriver",
    "介绍一下你自己。",
)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def block_split_documents(
    corpus: str | Path | None = None,
    block_size: int = HELDOUT_BLOCK_SIZE,
    test_size: float = HELDOUT_TEST_SIZE,
    seed: int = HELDOUT_SEED,
) -> tuple[set[int], set[int]]:
    """Row indices of the documents in the training blocks and in the test blocks of ``scripts/make_tiny_base.py``'s
    split (packed with the tiny base's tokenizer, ``train_test_split`` of the blocks); the two sets overlap."""
    from course_utils.data import load_corpus, tokenize_and_pack
    from course_utils.tokenizer import load_tiny_tokenizer

    raw = load_corpus(Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl")
    packed = tokenize_and_pack(raw, load_tiny_tokenizer(), block_size=block_size, document_ids=True)
    split = packed.train_test_split(test_size=test_size, seed=seed)
    return (
        {d for block in split["train"]["document"] for d in block},
        {d for block in split["test"]["document"] for d in block},
    )


@functools.lru_cache(maxsize=4)
def unseen_documents(
    corpus: str | Path | None = None,
    block_size: int = HELDOUT_BLOCK_SIZE,
    test_size: float = HELDOUT_TEST_SIZE,
    seed: int = HELDOUT_SEED,
) -> tuple[int, ...]:
    """Row indices of the corpus documents the committed tiny base never trained on.

    ``scripts/make_tiny_base.py`` packs the corpus with the tiny tokenizer and splits the *blocks*
    (``train_test_split(test_size, seed)``). A document cut across a train and a test block was partly trained on, so
    the test blocks alone are not held out (54 % of the documents they touch are also in training blocks). A
    document is unseen when none of its tokens is in a training block and no exact copy of it is: the documents of
    test blocks only, and the few whose tokens fell in a packing remainder.

    Deciding this tokenises the whole corpus (~4 s on 2 cores), so the answer is kept in ``env.cache_dir()`` under a
    key made of the corpus's and the tiny tokenizer's SHA-256 and the split's settings: a changed corpus, tokenizer
    or setting is a new key, never a stale answer.
    """
    from course_utils.data import load_corpus
    from course_utils.train import file_sha256

    corpus_path = Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl"
    key = hashlib.sha256(
        json.dumps(
            [
                _UNSEEN_CACHE_VERSION,
                file_sha256(corpus_path),
                file_sha256(TINY_BASE_DIR / "tokenizer.json"),
                block_size,
                test_size,
                seed,
            ]
        ).encode()
    ).hexdigest()[:16]
    cached = env.cache_dir() / "unseen_documents" / f"{key}.json"
    try:
        return tuple(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # not computed yet on this machine (or a damaged file): compute it
        pass
    raw = load_corpus(corpus_path)
    trained, _ = block_split_documents(corpus, block_size, test_size, seed)
    texts = raw["text"]
    trained_texts = {texts[d] for d in trained}  # an exact duplicate of a trained document is not unseen
    unseen = tuple(d for d in range(len(raw)) if d not in trained and texts[d] not in trained_texts)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(unseen), encoding="utf-8")
    partial.replace(cached)  # atomic: a notebook running at the same time reads the old file or the new one
    return unseen


def heldout_blocks(
    tokenizer: Any,
    corpus: str | Path | None = None,
    block_size: int = HELDOUT_BLOCK_SIZE,
    test_size: float = HELDOUT_TEST_SIZE,
    seed: int = HELDOUT_SEED,
    max_blocks: int | None = None,
) -> "datasets.Dataset":
    """Packed blocks of the pretraining documents the tiny base never saw, tokenised with ``tokenizer``.

    The documents are :func:`unseen_documents` (decided with the tiny base's own tokenizer and split, so every model
    is scored on the same texts); they are packed like the pretraining data (``<|endoftext|>`` after each document,
    blocks of ``block_size``). Documents are chosen first and packed second, so no block mixes in trained text.
    """
    from course_utils.data import load_corpus, tokenize_and_pack

    corpus = Path(corpus) if corpus is not None else DATA_DIR / "pretrain_corpus.jsonl"
    raw = load_corpus(corpus)
    held = tokenize_and_pack(
        raw.select(unseen_documents(corpus, block_size, test_size, seed)), tokenizer, block_size=block_size
    )
    if max_blocks is not None:
        held = held.select(range(min(max_blocks, len(held))))
    return held


@dataclass
class ModelReport:
    """What :func:`evaluate_model` measured for one model."""

    name: str
    loss: float
    perplexity: float
    accuracy: float
    by_task: dict[str, float]
    generations: dict[str, str]
    predictions: list[str] = field(repr=False, default_factory=list)
    n_blocks: int = 0
    n_tasks: int = 0
    num_parameters: int = 0
    seconds: float = 0.0

    def row(self, digits: int = 3) -> dict[str, Any]:
        """A flat, rounded row for a table."""
        out: dict[str, Any] = {
            "model": self.name,
            "params": self.num_parameters,
            "heldout_loss": round(self.loss, digits),
            "perplexity": round(self.perplexity, 2),
            "task_acc": round(self.accuracy, digits),
        }
        out.update({f"acc_{task}": round(value, digits) for task, value in sorted(self.by_task.items())})
        return out


def _unique_parameters(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def evaluate_model(
    model: Any,
    tokenizer: Any,
    name: str = "model",
    *,
    heldout: Any = None,
    task_rows: Sequence[Mapping[str, Any]] | None = None,
    generation_prompts: Sequence[str] = DEFAULT_GENERATION_PROMPTS,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> ModelReport:
    """Evaluate any causal LM (plain, PEFT-wrapped or merged) the same way.

    * held-out perplexity: token-weighted mean next-token cross-entropy on ``heldout`` (packed blocks with
      ``input_ids`` / ``labels``; default :func:`heldout_blocks` of ``tokenizer``), ``exp`` of it;
    * task accuracy: greedy replies with the chat template to ``task_rows`` (default: all of ``tasks_test.jsonl``)
      scored by ``tasks.score_answer``, overall and per task;
    * generations: greedy replies to ``generation_prompts`` (single user turns), for reading side by side.
    """
    from course_utils.sft import generate_answers, score_tasks
    from course_utils.train import dataset_perplexity

    started = time.perf_counter()
    heldout = heldout if heldout is not None else heldout_blocks(tokenizer)
    from course_utils.tasks import load_task_rows

    task_rows = list(task_rows) if task_rows is not None else load_task_rows()
    was_training = model.training
    model.eval()
    loss, ppl = dataset_perplexity(model, heldout, batch_size=16)
    scores = score_tasks(model, tokenizer, task_rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    by_task, predictions = scores.by_task(), scores.predictions
    prompts = [[{"role": "user", "content": prompt}] for prompt in generation_prompts]
    replies = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    model.train(was_training)
    accuracy = by_task.pop("all")
    if not math.isfinite(loss):
        raise FloatingPointError(f"{name}: held-out loss is not finite ({loss})")
    return ModelReport(
        name=name,
        loss=loss,
        perplexity=ppl,
        accuracy=accuracy,
        by_task=by_task,
        generations=dict(zip(generation_prompts, replies)),
        predictions=predictions,
        n_blocks=len(heldout),
        n_tasks=len(task_rows),
        num_parameters=_unique_parameters(model),
        seconds=time.perf_counter() - started,
    )


def evaluation_table(reports: Sequence[ModelReport], digits: int = 3) -> "pandas.DataFrame":
    """One row per model: parameters, held-out loss and perplexity, task accuracy overall and per task."""
    import pandas as pd

    return pd.DataFrame([report.row(digits) for report in reports]).set_index("model")


def generations_table(reports: Sequence[ModelReport], width: int = 40) -> "pandas.DataFrame":
    """Prompts as rows, models as columns, each cell a (shortened, one-line) greedy reply."""
    import pandas as pd

    def short(text: str) -> str:
        text = text.replace("\n", " ⏎ ")
        return text if len(text) <= width else text[: width - 1] + "…"

    prompts = list(reports[0].generations)
    data = {report.name: [short(report.generations[p]) for p in prompts] for report in reports}
    return pd.DataFrame(data, index=[p.replace("\n", " ⏎ ") for p in prompts])


# ----------------------------------------------------------------------------------------------------------------
# Logits and round trips
# ----------------------------------------------------------------------------------------------------------------


def probe_ids(tokenizer: Any, text: str = "Mira 的首都是什么？The capital is", length: int = 32) -> "torch.Tensor":
    """A fixed ``(1, length)`` batch of token ids for comparing logits (the text repeated, cut to ``length``)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (length // max(1, len(ids)) + 1))[:length]
    return torch.tensor([ids], dtype=torch.long)


def logits_of(model: Any, input_ids: "torch.Tensor") -> "torch.Tensor":
    """Float32 logits ``(batch, seq, vocab)`` of ``model`` in eval mode (dropout off), without a KV cache."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False).logits.float()
    model.train(was_training)
    return out


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute element-wise difference of two arrays/tensors of the same shape (torch or numpy)."""
    import numpy as np

    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def save_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    arguments: Mapping[str, Any] | None = None,
    data_files: Sequence[str | Path] = (),
    extra: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` model (safetensors) and tokenizer, then ``metadata.json`` and a README.md model card.

    ``metadata.json`` is ``course_utils.train.write_metadata`` (arguments, data fingerprints, git commit, library
    versions, ``extra``); ``card`` holds the keyword arguments of :func:`write_model_card`.
    """
    from course_utils.train import write_metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with env.quiet_transformers():
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    write_metadata(out, dict(arguments or {}), data_files, extra=extra)
    if card is not None:
        write_model_card(out, **card)
    return out


def reload_model(out_dir: str | Path) -> tuple[Any, Any]:
    """Load a folder written by :func:`save_model` (``trust_remote_code=False``); model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with env.quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)
    return model.eval(), tokenizer


def save_adapter(peft_model: Any, out_dir: str | Path, method: str = "library") -> Path:
    """Save only the adapter weights of a PEFT model (kilobytes, not the base model).

    ``method="scratch"``: ``peft.get_peft_model_state_dict`` (the adapter tensors, with the adapter name removed
    from their keys) written with ``safetensors.torch.save_file`` plus ``adapter_config.json``;
    ``method="library"``: ``peft_model.save_pretrained`` (writes the same two files).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method == "library":
        peft_model.save_pretrained(str(out))
    elif method == "scratch":
        state = {key: value.detach().cpu().contiguous() for key, value in get_peft_model_state_dict(peft_model).items()}
        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        peft_model.peft_config["default"].save_pretrained(str(out))
    else:
        raise ValueError(f"method must be 'library' or 'scratch', not {method!r}")
    return out


def load_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """``PeftModel.from_pretrained`` on ``base_model`` (must be the same base weights the adapter was trained on)."""
    from peft import PeftModel

    with env.quiet_transformers():
        return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval()


def merge_adapter(peft_model: Any) -> Any:
    """A merged copy (``W + B A * alpha / r`` folded into each base weight): ``merge_and_unload`` on a deep copy,
    in eval mode, so the PEFT model itself is left untouched."""
    merged = copy.deepcopy(peft_model).eval().merge_and_unload()
    return merged.eval()


def folder_bytes(path: str | Path, pattern: str = "*") -> int:
    """Total size in bytes of the files in ``path`` matching ``pattern``."""
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file())


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------


def write_model_card(
    out_dir: str | Path,
    *,
    title: str,
    base_model: str,
    data: Sequence[str] | str,
    steps: str,
    metrics: Mapping[str, Any] | None = None,
    load: str | None = None,
    notes: Sequence[str] = (),
    filename: str = "README.md",
) -> Path:
    """Write a short model card (Markdown) next to a saved model: what it is, the data, the training steps, the
    measured numbers, how to load it, and caveats. No timestamps, so the same run writes the same card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = [data] if isinstance(data, str) else list(data)
    lines = [f"# {title}", "", f"- **Base model**: {base_model}", "- **Training data**:"]
    lines += [f"  - {item}" for item in data]
    lines += [f"- **Training**: {steps}", ""]
    if metrics:
        lines += ["## Measured", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()]
        lines.append("")
    if load:
        lines += ["## Load", "", "```python", load, "```", ""]
    lines += ["## Caveats", "", "- A teaching model (~1.5M parameters) trained on generated data; not for real use."]
    lines += [f"- {note}" for note in notes]
    lines += [
        "- `metadata.json` in this folder: data fingerprint (SHA-256), git commit, arguments, library versions.",
        "",
    ]
    path = out / filename
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
