"""Tokenizer: train a byte-level BPE with ChatML special tokens and wrap it for transformers.

The tiny tokenizer follows Qwen2's conventions on a small vocabulary:

* ``<|endoftext|>`` separates pretraining documents,
* ``<|im_start|>`` / ``<|im_end|>`` frame chat turns (ChatML); ``<|im_end|>`` is the EOS of a reply,
* ``<|pad|>`` is a dedicated pad token, so a collator that masks padding never masks the EOS
  (the ``pad_token = eos_token`` pitfall taught in notebook 02).

The chat template marks assistant turns with ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` and TRL's ``assistant_only_loss`` work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from course_utils import DATA_DIR

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: list[str] = [ENDOFTEXT, IM_START, IM_END, PAD]

#: ChatML as Qwen uses it, with ``{% generation %}`` markers around what the assistant must learn:
#: the reply and its ``<|im_end|>``. Unknown roles raise instead of rendering silently.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TINY_TOKENIZER_DIR: Path = DATA_DIR / "tiny_base"


def iter_corpus_texts(path: Path | None = None, field: str = "text") -> Iterator[str]:
    """Yield the ``text`` field of every line of a JSONL corpus (the project's pretraining corpus by default)."""
    import json

    path = path or DATA_DIR / "pretrain_corpus.jsonl"
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)[field]


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "tokenizers.Tokenizer":
    """Train a byte-level BPE (``tokenizers``) with the ChatML special tokens at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def wrap_tokenizer(tokenizer: "tokenizers.Tokenizer", model_max_length: int = 512) -> "PreTrainedTokenizerFast":
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with pad/EOS and the chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[ENDOFTEXT, IM_START],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_tiny_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 4096, model_max_length: int = 512
) -> "PreTrainedTokenizerFast":
    """Train the workbook's tiny tokenizer on ``texts`` (default: the project's pretraining corpus)."""
    texts = texts if texts is not None else iter_corpus_texts()
    return wrap_tokenizer(train_bpe(texts, vocab_size=vocab_size), model_max_length=model_max_length)


def load_tiny_tokenizer(path: Path | None = None) -> "PreTrainedTokenizerFast":
    """Load the committed tiny tokenizer (``data_samples/tiny_base``), the one the tiny base model was trained with."""
    from transformers import AutoTokenizer

    path = path or TINY_TOKENIZER_DIR
    if not (Path(path) / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path}/tokenizer.json not found: run `python scripts/make_tiny_base.py` to rebuild the tiny base"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chars_per_token(tokenizer: "PreTrainedTokenizerBase", texts: Iterable[str]) -> float:
    """Compression: characters divided by tokens over ``texts`` (higher means fewer tokens per character)."""
    n_chars = 0
    n_tokens = 0
    for text in texts:
        n_chars += len(text)
        n_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n_tokens == 0:
        raise ValueError("chars_per_token: no tokens (empty texts)")
    return n_chars / n_tokens
