"""Tests of course_utils.sft: masks equal three ways, truncation, training, generation, the script's YAML."""

from __future__ import annotations

import json
import math
from itertools import islice

import pytest

from course_utils import DATA_DIR, PROJECT_ROOT, TINY_BASE_DIR, chat_formats, models, sft, tasks
from course_utils.data import DataFormatError
from course_utils.train import file_sha256

IGNORE = sft.IGNORE_INDEX

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "写出这个单词的首字母。\ncat"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "And the first letter of dog?"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "哪条河流经柯丽兰？"},
        {"role": "assistant", "content": "洛萨河流经柯丽兰。"},
    ],
    "one_char_reply": [{"role": "user", "content": "First letter of dog?"}, {"role": "assistant", "content": "d"}],
    "long": [
        {"role": "system", "content": "Answer briefly. " * 6},
        {"role": "user", "content": "Tell me the capital of Soria, please, in one word."},
        {"role": "assistant", "content": "Valmont is the capital."},
    ],
}


@pytest.fixture(scope="module")
def tokenizer():
    from course_utils.tokenizer import iter_corpus_texts, load_tiny_tokenizer, train_tiny_tokenizer

    if (TINY_BASE_DIR / "tokenizer.json").exists():
        return load_tiny_tokenizer()
    return train_tiny_tokenizer(islice(iter_corpus_texts(), 400), vocab_size=1024)


def test_scratch_equals_apply_chat_template(tokenizer):
    for name, messages in CONVERSATIONS.items():
        for max_length in (None, 12, 30):
            mine = sft.encode_chat(messages, tokenizer, max_length=max_length)
            lib = sft.encode_chat_with_template(messages, tokenizer, max_length=max_length)
            assert mine["input_ids"] == lib["input_ids"], name
            assert mine["labels"] == lib["labels"], (name, max_length)
            assert len(mine["attention_mask"]) == len(mine["input_ids"])
    # the rendered text is the template's text, token for token
    messages = CONVERSATIONS["system_multi_turn"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == sft.render_chatml(messages)


def test_masks_cover_reply_and_im_end_only(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    item = sft.encode_chat(CONVERSATIONS["system_multi_turn"], tokenizer)
    trained = [t for t in item["labels"] if t != IGNORE]
    assert tokenizer.decode(trained) == "c<|im_end|>d<|im_end|>洛萨河流经柯丽兰。<|im_end|>"
    short = sft.encode_chat(CONVERSATIONS["one_char_reply"], tokenizer)
    assert [t for t in short["labels"] if t != IGNORE][-1] == im_end
    with pytest.raises(DataFormatError, match="empty string"):  # an empty reply would train only <|im_end|>
        sft.encode_chat([{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}], tokenizer)
    everything = sft.encode_chat(CONVERSATIONS["single"], tokenizer, train_on="all")
    assert everything["labels"] == everything["input_ids"]


def test_trl_collated_labels_equal(tokenizer):
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    max_length = 30
    conversations = list(CONVERSATIONS.values())
    model = models.build_model("tiny", tokenizer, seed=0)
    args = SFTConfig(
        output_dir=str(PROJECT_ROOT / ".cache" / "test_trl_sft"),
        assistant_only_loss=True,
        max_length=max_length,
        per_device_train_batch_size=2,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        shuffle_dataset=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list([{"messages": m} for m in conversations]),
    )
    got = {}
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert (labels[n:] == IGNORE).all()
            got[tuple(ids[:n].tolist())] = labels[:n].tolist()
    mine, report = sft.encode_rows(conversations, tokenizer, max_length=max_length)
    assert got == {tuple(item["input_ids"]): item["labels"] for item in mine}
    assert report.rows_out == len(got) and report.rows_in == len(conversations)


def test_truncation_drops_rows_without_trained_tokens(tokenizer):
    import torch

    rows = [CONVERSATIONS["long"], CONVERSATIONS["single"]]
    first_trained = [
        next(i for i, label in enumerate(sft.encode_chat(m, tokenizer)["labels"]) if label != IGNORE) for m in rows
    ]
    max_length = first_trained[1] + 2
    assert first_trained[0] >= max_length
    encoded, report = sft.encode_rows(rows, tokenizer, max_length=max_length)
    assert report.rows_in == 2 and report.rows_out == 1
    assert report.dropped["no trained token after truncation"] == 1
    assert all(any(label != IGNORE for label in item["labels"]) for item in encoded)
    # what the drop prevents: a batch whose labels are all -100 has a NaN mean loss
    model = models.build_model("tiny", tokenizer, seed=0)
    bad = sft.encode_chat(CONVERSATIONS["long"], tokenizer, max_length=max_length)
    out = model(input_ids=torch.tensor([bad["input_ids"]]), labels=torch.tensor([bad["labels"]]))
    assert math.isnan(out.loss.item())
    good = sft.sft_collator(tokenizer)(encoded)
    assert math.isfinite(model(**good).loss.item())


def test_loss_is_shifted_cross_entropy_on_assistant_tokens(tokenizer):
    import torch
    import torch.nn.functional as F

    model = models.build_model("tiny", tokenizer, seed=0)
    batch = sft.sft_collator(tokenizer)([sft.encode_chat(m, tokenizer) for m in CONVERSATIONS.values()])
    assert batch["input_ids"].shape == batch["labels"].shape
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1]
    targets = batch["labels"][:, 1:]
    manual = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_encode_chat_checks_the_conversation_first():
    with pytest.raises(DataFormatError, match="unknown role"):
        sft.encode_chat([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], None)


def test_sharegpt_sample_masks_equal_template(tokenizer):
    rows, report = chat_formats.load_sft_rows(DATA_DIR / "sharegpt_sample.jsonl")
    assert report.rows_out == 50
    for row in rows + chat_formats.load_sft_rows(DATA_DIR / "sft_messages.jsonl", limit=200)[0]:
        mine = sft.encode_chat(row["messages"], tokenizer, max_length=64)
        lib = sft.encode_chat_with_template(row["messages"], tokenizer, max_length=64)
        assert mine["labels"] == lib["labels"] and mine["input_ids"] == lib["input_ids"]


def test_mask_html(tokenizer):
    item = sft.encode_chat(CONVERSATIONS["single"], tokenizer)
    page = sft.mask_html(item["input_ids"], item["labels"], tokenizer, title="demo")
    assert page.count("<span") == len(item["input_ids"]) + 2
    assert page.count("#b7e4c7;color") == sum(label != IGNORE for label in item["labels"])


@pytest.fixture(scope="module")
def tiny_sft():
    """The committed SFT model and its tokenizer (skips while data_samples/tiny_sft is not built)."""
    from transformers import AutoModelForCausalLM

    from course_utils.tokenizer import load_tiny_tokenizer

    path = models.LOCAL_MODELS["tiny-sft"]
    if not (path / "model.safetensors").exists():
        pytest.skip("data_samples/tiny_sft not built yet")
    return AutoModelForCausalLM.from_pretrained(str(path)), load_tiny_tokenizer(path)


def test_generate_and_accuracy_on_tiny_sft(tiny_sft):
    model, tokenizer = tiny_sft
    path = models.LOCAL_MODELS["tiny-sft"]
    rows = tasks.load_task_rows(DATA_DIR / "tasks_test.jsonl")
    accuracy = sft.task_accuracy(model, tokenizer, rows[:60])
    scores = sft.score_tasks(model, tokenizer, rows[:60])  # the same greedy answers, kept with their tasks
    per_task = scores.by_task()
    assert scores.accuracy == accuracy == per_task["all"] and len(scores.predictions) == 60
    assert set(per_task) - {"all"} == {row["task"] for row in rows[:60]}
    metadata = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    assert accuracy >= 0.3 and metadata["task_accuracy"]["after"]["all"] > metadata["task_accuracy"]["before"]["all"]


def test_script_parses_llamafactory_yaml(tmp_path, load_script):
    script = load_script("sft")
    model_args, data_args, ft_args, training_args = script.parse_arguments(
        [str(PROJECT_ROOT / "configs" / "sft_tiny.yaml"), "--max_steps", "7", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_name_or_path == "tiny-base" and model_args.template == "chatml"
    assert ft_args.stage == "sft" and ft_args.finetuning_type == "lora" and ft_args.lora_target == "all"
    assert ft_args.lora_rank == 8 and ft_args.merge_lora is True
    assert data_args.dataset == "tasks_train,sft_messages" and data_args.cutoff_len == 128
    assert training_args.max_steps == 7 and training_args.output_dir == str(tmp_path)
    _, _, lora, _ = script.parse_arguments([str(PROJECT_ROOT / "configs" / "sft_lora_example.yaml")])
    assert lora.finetuning_type == "lora" and lora.lora_target == "q_proj,v_proj"
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\nlora_targets: q_proj\n")
    with pytest.raises(SystemExit, match="lora_targets"):
        script.parse_arguments([str(bad)])
    # YAML 1.1 reads 1e-3 (no dot) as a string; in the file or on the command line it must still be a float
    exp = tmp_path / "exp.yaml"
    exp.write_text("stage: sft\nlearning_rate: 1e-3\n")
    *_, training_args = script.parse_arguments([str(exp), "--weight_decay", "1e-1"])
    assert training_args.learning_rate == 1e-3 and training_args.weight_decay == 0.1
    with pytest.raises(SystemExit, match=r"exp.yaml: learning_rate must be a number \(float\), got 'fast'"):
        script.parse_arguments([str(exp), "--learning_rate", "fast"])


def test_lora_run_saves_a_merged_model_and_its_adapter(tmp_path, load_script):
    """merge_lora: output_dir loads as a plain checkpoint and equals base + adapter; the adapter sits in adapter/."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    script = load_script("sft")
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.loads(line) for line in islice(open(DATA_DIR / "tasks_train.jsonl", encoding="utf-8"), 16)]
    (data / "tasks_train.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    out = tmp_path / "out"
    script.main(
        [
            str(PROJECT_ROOT / "configs" / "sft_tiny.yaml"),
            "--dataset",
            "tasks_train",
            "--dataset_dir",
            str(data),
            "--eval_tasks",
            "",
            "--max_steps",
            "2",
            "--warmup_steps",
            "0",
            "--logging_steps",
            "1",
            "--output_dir",
            str(out),
        ]
    )
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()  # full weights
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base, tokenizer = models.load_model_and_tokenizer("tiny-base")
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.tensor([tokenizer("The capital of").input_ids])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)
        with with_adapter.disable_adapter():
            base_logits = with_adapter(ids).logits
        assert not torch.allclose(merged(ids).logits, base_logits, atol=1e-4)  # the two steps changed the model
    metadata = json.loads((out / "metadata.json").read_text(encoding="utf-8"))  # train.write_metadata's layout
    assert list(metadata)[:4] == ["arguments", "data", "git_commit", "versions"] and "peft" in metadata["versions"]
    assert metadata["data"] == [
        {
            "path": "tasks_train.jsonl",
            "bytes": (data / "tasks_train.jsonl").stat().st_size,
            "sha256": file_sha256(data / "tasks_train.jsonl"),
        }
    ]
    assert metadata["command"].startswith("python scripts/sft.py ") and len(metadata["train_loss_history"]) == 2


def test_committed_sft_runs_differ_only_in_train_on_prompt():
    """configs/sft_tiny.yaml and sft_tiny_all_tokens.yaml: the notebook-06 comparison changes one thing."""
    import yaml

    a = yaml.safe_load((PROJECT_ROOT / "configs" / "sft_tiny.yaml").read_text(encoding="utf-8"))
    b = yaml.safe_load((PROJECT_ROOT / "configs" / "sft_tiny_all_tokens.yaml").read_text(encoding="utf-8"))
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"train_on_prompt", "output_dir"}
    assert a["train_on_prompt"] is False and b["train_on_prompt"] is True
    for config in (a, b):
        meta_path = PROJECT_ROOT / config["output_dir"] / "metadata.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            assert meta["arguments"]["data"]["train_on_prompt"] is config["train_on_prompt"]
            assert meta["arguments"]["training"]["max_steps"] == config["max_steps"]
            finetuning = meta["arguments"]["finetuning"]
            for key in ("finetuning_type", "lora_target", "lora_rank", "lora_alpha", "merge_lora"):
                assert finetuning[key] == config[key], (config["output_dir"], key)


def test_stop_after_steps_keeps_the_schedule(tokenizer):
    """Stopping early reproduces the first logged losses of the longer run (same cosine schedule)."""
    from course_utils import env, models

    rows = list(CONVERSATIONS.values())[:2] * 8
    losses = {}
    for stop in (None, 2):
        env.seed_everything(0)
        model = models.build_model("tiny", vocab_size=len(tokenizer))
        result = sft.train_sft(
            model,
            tokenizer,
            rows,
            max_steps=4,
            batch_size=4,
            logging_steps=1,
            learning_rate=1e-3,
            warmup_steps=1,
            device="cpu",
            stop_after_steps=stop,
        )
        losses[stop] = result.losses
    assert len(losses[2]) == 2 and len(losses[None]) == 4
    assert losses[2] == losses[None][:2]


def test_sampled_generation_is_seeded_and_grouped(tiny_sft):
    from course_utils import preference

    model, tokenizer = tiny_sft
    rows = tasks.load_task_rows(DATA_DIR / "tasks_test.jsonl")
    prompts = [tasks.task_to_messages(r, with_answer=False) for r in rows[:3]]
    first = sft.generate_answers(model, tokenizer, prompts, max_new_tokens=6, num_samples=4, seed=1)
    again = sft.generate_answers(model, tokenizer, prompts, max_new_tokens=6, num_samples=4, seed=1)
    assert len(first) == 12 and first == again
    reward = preference.sampled_reward(model, tokenizer, rows[:8], samples=4, seed=0)
    assert 0.0 <= reward <= 1.0 and reward == preference.sampled_reward(model, tokenizer, rows[:8], samples=4, seed=0)
