"""Tests of course_utils.train and scripts/pretrain.py (single process, torchrun with gloo, DeepSpeed ZeRO-2 on CPU).

The torchrun and DeepSpeed tests start subprocesses and are marked slow; ``make test`` still runs them. The first
DeepSpeed run on a machine compiles C++ ops (~80 s, cached in ~/.cache/torch_extensions afterwards).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import DATA_DIR, PROJECT_ROOT, env

env.setup_offline()

import torch  # noqa: E402

from course_utils import data, models, train  # noqa: E402
from course_utils.loss import causal_lm_loss, count_target_tokens  # noqa: E402
from course_utils.tokenizer import iter_corpus_texts, train_tiny_tokenizer  # noqa: E402

CORPUS = DATA_DIR / "pretrain_corpus.jsonl"
SCRIPT = PROJECT_ROOT / "scripts" / "pretrain.py"
#: |loss(torchrun, 2 x 4 blocks) - loss(one process, 8 blocks)| per logged step. Measured: ~2e-6 (fp32, gloo).
DDP_TOLERANCE = 1e-4
#: DeepSpeed's own AdamW (ZeRO-2, fp32) against torch's fused AdamW, same data. Measured: 1e-6 to 1.2e-4 over 4 steps.
DEEPSPEED_TOLERANCE = 1e-3


def _documents(n: int) -> list[str]:
    texts = []
    for text in iter_corpus_texts(CORPUS):
        texts.append(text)
        if len(texts) == n:
            break
    return texts


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A 512-token BPE trained on 300 documents (independent of the committed tiny base), saved to a folder."""
    tokenizer = train_tiny_tokenizer(_documents(300), vocab_size=512)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return tokenizer, folder


@pytest.fixture(scope="module")
def packed(small_tokenizer):
    import datasets

    datasets.disable_progress_bars()
    tokenizer, _ = small_tokenizer
    corpus = datasets.Dataset.from_dict({"text": _documents(120)})
    return data.tokenize_and_pack(corpus, tokenizer, block_size=32)


def test_cosine_with_warmup_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=5, num_training_steps=30)
    for step in range(30):
        assert train.cosine_with_warmup(step, 5, 30) == pytest.approx(scheduler.get_last_lr()[0], abs=1e-12)
        optimizer.step()
        scheduler.step()
    assert train.cosine_with_warmup(0, 5, 30) == 0.0
    assert train.cosine_with_warmup(30, 5, 30, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_decay_groups_exclude_biases_and_norms(small_tokenizer):
    from transformers import Trainer, TrainingArguments

    tokenizer, _ = small_tokenizer
    model = models.build_model("tiny", tokenizer, seed=0)
    ours = train.decay_parameter_names(model)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    theirs = set(Trainer(model=model, args=args).get_decay_parameter_names(model))
    named = {name for name, _ in model.named_parameters()}  # the tied lm_head.weight is the embedding
    assert ours == theirs & named
    assert not any("bias" in name or "norm" in name for name in ours)


def test_train_order_is_trainer_order():
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    dataset = datasets.Dataset.from_dict(
        {"input_ids": [[i, i] for i in range(20)], "labels": [[i, i] for i in range(20)]}
    )
    args = TrainingArguments(
        output_dir="unused",
        per_device_train_batch_size=4,
        seed=3,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
    )
    model = torch.nn.Linear(1, 1)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    seen = [int(row[0]) for batch in trainer.get_train_dataloader() for row in batch["input_ids"]]
    assert seen == train.train_order(20, seed=3)


def test_window_normalisation_equals_one_big_batch():
    """Summing token losses over the accumulation window and dividing by its token count = one big batch."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (4, 6))
    labels[0, 2:] = -100  # micro-batch 1 has fewer label tokens than micro-batch 2
    full_sum, full_n = causal_lm_loss(logits, labels, reduction="sum"), count_target_tokens(labels)
    (full_sum / full_n).backward()
    expected = logits.grad.clone()
    logits.grad = None
    parts = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    n_items = sum(int((lab[:, 1:] != -100).sum()) for _, lab in parts)
    for part_logits, part_labels in parts:
        causal_lm_loss(part_logits, part_labels, num_items_in_batch=n_items).backward()
    assert torch.allclose(logits.grad, expected, atol=1e-7)
    # ...whereas averaging micro-batch means differs when the counts differ
    means = [causal_lm_loss(lg, lb) for lg, lb in parts]
    assert abs(float(sum(means).detach() / 2) - float(full_sum.detach() / full_n)) > 1e-3


def test_train_loop_matches_trainer(small_tokenizer, packed, tmp_path):
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    tokenizer, _ = small_tokenizer
    torch.set_num_threads(min(2, torch.get_num_threads()))
    hyper = dict(learning_rate=3e-3, weight_decay=0.1, warmup_steps=2, max_steps=6, max_grad_norm=1.0, seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **hyper,
    )
    trainer = Trainer(
        model=models.build_model("tiny", tokenizer, seed=0),
        args=args,
        train_dataset=packed,
        data_collator=default_data_collator,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    expected = [loss for _, loss in train.log_history(trainer)]
    history = train.train_loop(
        models.build_model("tiny", tokenizer, seed=0), packed, batch_size=4, gradient_accumulation_steps=2, **hyper
    )
    got = [entry["loss"] for entry in history]
    assert len(got) == len(expected) == 6
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4
    assert got[-1] < got[0]


def test_train_loop_fp16_uses_a_grad_scaler(small_tokenizer, packed, monkeypatch):
    """The T4 path of the hand-written loop, on CPU: autocast fp16 + GradScaler (unscale before clipping).
    Losses follow the fp32 loop within fp16 rounding, and a scaler really ran (its scale was consulted)."""
    tokenizer, _ = small_tokenizer
    hyper = dict(learning_rate=3e-3, warmup_steps=1, max_steps=4, max_grad_norm=1.0, seed=0, batch_size=4)
    fp32 = [e["loss"] for e in train.train_loop(models.build_model("tiny", tokenizer, seed=0), packed, **hyper)]
    calls = {"unscale": 0, "step": 0}
    real_unscale, real_step = torch.amp.GradScaler.unscale_, torch.amp.GradScaler.step

    def unscale(self, optimizer):
        calls["unscale"] += 1
        return real_unscale(self, optimizer)

    def step(self, optimizer, *args, **kwargs):
        assert calls["unscale"] == calls["step"] + 1, "clipping must see unscaled gradients"
        calls["step"] += 1
        return real_step(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", unscale)
    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    fp16 = [
        e["loss"]
        for e in train.train_loop(
            models.build_model("tiny", tokenizer, seed=0), packed, autocast_dtype=torch.float16, **hyper
        )
    ]
    assert calls == {"unscale": 4, "step": 4}
    assert all(math.isfinite(x) for x in fp16)
    assert max(abs(a - b) for a, b in zip(fp16, fp32)) < 0.05  # fp16 rounding of the matmuls, 4 steps


def test_train_loop_refuses_bf16_master_weights(small_tokenizer, packed):
    tokenizer, _ = small_tokenizer
    model = models.build_model("tiny", tokenizer, seed=0).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 master weights"):
        train.train_loop(model, packed, max_steps=1, batch_size=2, autocast_dtype=torch.bfloat16)


def test_perplexity_is_token_weighted(small_tokenizer, packed):
    tokenizer, _ = small_tokenizer
    model = models.build_model("tiny", tokenizer, seed=0)
    loss, ppl = train.dataset_perplexity(model, packed.select(range(10)), batch_size=3)
    assert ppl == pytest.approx(math.exp(loss))
    assert abs(loss - math.log(len(tokenizer))) < 0.5  # random init: close to uniform over the vocabulary
    batch = torch.tensor(packed.select(range(10))["input_ids"])
    with torch.no_grad():
        reference = model(input_ids=batch, labels=batch).loss.item()
    assert loss == pytest.approx(reference, abs=1e-4)


def test_activation_checkpointing_saves_memory_not_results(small_tokenizer):
    tokenizer, _ = small_tokenizer
    ids = torch.randint(0, len(tokenizer), (2, 128))
    results = []
    for use_ckpt in (False, True):
        model = models.build_model("tiny", tokenizer, seed=0)
        model.train()
        if use_ckpt:
            model.activation_checkpointing_enable()
        saved, loss = train.saved_activation_bytes(model, ids)
        loss.backward()
        results.append((saved, float(loss), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (plain, loss0, grad0), (ckpt, loss1, grad1) = results
    assert ckpt < 0.5 * plain
    assert loss0 == pytest.approx(loss1, abs=1e-6) and torch.allclose(grad0, grad1, atol=1e-6)


def test_write_metadata(tmp_path):
    path = train.write_metadata(tmp_path / "model", {"lr": 1e-3, "out": Path("x")}, [CORPUS], extra={"loss": 1.5})
    meta = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == "metadata.json"
    assert meta["arguments"] == {"lr": 1e-3, "out": "x"} and meta["loss"] == 1.5
    assert meta["data"][0]["path"] == "data_samples/pretrain_corpus.jsonl"
    assert meta["data"][0]["sha256"] == train.file_sha256(CORPUS) and meta["data"][0]["bytes"] == CORPUS.stat().st_size
    assert {"torch", "transformers", "python"} <= set(meta["versions"])
    assert "git_commit" in meta
    assert path.read_text(encoding="utf-8") == train.write_metadata(
        tmp_path / "model", {"lr": 1e-3, "out": Path("x")}, [CORPUS], extra={"loss": 1.5}
    ).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# scripts/pretrain.py in subprocesses
# ---------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script_args(tokenizer_dir: Path, out: Path, per_device: int) -> list[str]:
    return [
        "--tokenizer_name",
        str(tokenizer_dir),
        "--output_dir",
        str(out),
        "--max_documents",
        "150",
        "--block_size",
        "32",
        "--max_eval_samples",
        "8",
        "--per_device_train_batch_size",
        str(per_device),
        "--max_steps",
        "4",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "1",
        "--weight_decay",
        "0.1",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "--seed",
        "0",
        "--do_train",
    ]


def _run(command: list[str], extra_env: dict[str, str] | None = None, timeout: int = 400) -> None:
    # Each run starts from a clean launcher state: a stale RANK/MASTER_PORT inherited from the test process
    # would make a single-process run try to rendezvous on a port it does not own.
    base_env = env.child_environment()
    run_env = {**base_env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT), **(extra_env or {})}
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )


def _losses(out: Path) -> list[float]:
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    return [loss for _, loss in meta["train_losses"]]


def _assert_two_processes_match(out: Path, reference: Path, tolerance: float) -> None:
    """A 2-process run (2 x 4 blocks) logged the same 4 losses as the 1-process reference (8 blocks per step)."""
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["world_size"] == 2
    single, launched = _losses(reference), _losses(out)
    assert len(launched) == len(single) == 4
    assert max(abs(a - b) for a, b in zip(single, launched)) < tolerance


@pytest.fixture(scope="module")
def single_process_run(small_tokenizer, tmp_path_factory):
    """One process, 8 blocks per step: the reference for the distributed runs."""
    _, tokenizer_dir = small_tokenizer
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, str(SCRIPT), *_script_args(tokenizer_dir, out, per_device=8)])
    return out


@pytest.mark.slow
def test_single_process_script_saves_a_usable_model(single_process_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = single_process_run
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["world_size"] == 1 and meta["data"][0]["sha256"] == train.file_sha256(CORPUS)
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(small_tokenizer, single_process_run, tmp_path):
    """DDP with gloo, 2 processes x 4 blocks = the same global batch of 8 blocks, same data order."""
    _, tokenizer_dir = small_tokenizer
    out = tmp_path / "ddp"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    _run([*launcher, str(SCRIPT), *_script_args(tokenizer_dir, out, per_device=4), "--ddp_backend", "gloo"])
    _assert_two_processes_match(out, single_process_run, DDP_TOLERANCE)


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_single_process(small_tokenizer, single_process_run, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs: accelerate starts the two
    processes through torch.distributed.run and Trainer falls back to gloo; same global batch as the reference."""
    _, tokenizer_dir = small_tokenizer
    out = tmp_path / "accelerate"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(_free_port())]
    _run([*launcher, str(SCRIPT), *_script_args(tokenizer_dir, out, per_device=4), "--ddp_backend", "gloo"])
    _assert_two_processes_match(out, single_process_run, DDP_TOLERANCE)


@pytest.mark.slow
def test_deepspeed_zero2_cpu(small_tokenizer, single_process_run, tmp_path):
    """DeepSpeed ZeRO-2 through Trainer, one CPU process, with the committed configs/ds_config_zero2.json."""
    pytest.importorskip("deepspeed")
    _, tokenizer_dir = small_tokenizer
    out = tmp_path / "zero2"
    launcher_env = {
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "2",
    }
    _run(
        [
            sys.executable,
            str(SCRIPT),
            *_script_args(tokenizer_dir, out, per_device=8),
            "--deepspeed",
            str(PROJECT_ROOT / "configs" / "ds_config_zero2.json"),
        ],
        extra_env=launcher_env,
        timeout=560,
    )
    single, zero2 = _losses(single_process_run), _losses(out)
    assert len(zero2) == 4 and all(math.isfinite(x) for x in zero2)
    assert max(abs(a - b) for a, b in zip(single, zero2)) < DEEPSPEED_TOLERANCE
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_deepspeed_launcher_two_cpu_processes_zero2(small_tokenizer, single_process_run, tmp_path):
    """The seed's launcher, `deepspeed --num_gpus 2 scripts/pretrain.py --deepspeed ds_config_zero2.json`, on a CPU:
    with DS_ACCELERATOR=cpu it starts two processes (gloo + DeepSpeed's shared-memory op); 2 x 4 blocks = the
    reference's global batch, so the losses match the single-process run."""
    pytest.importorskip("deepspeed")
    _, tokenizer_dir = small_tokenizer
    out = tmp_path / "ds_launcher"
    _run(
        [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            "2",
            "--master_port",
            str(_free_port()),
            str(SCRIPT),
            *_script_args(tokenizer_dir, out, per_device=4),
            "--deepspeed",
            str(PROJECT_ROOT / "configs" / "ds_config_zero2.json"),
        ],
        extra_env={"DS_ACCELERATOR": "cpu"},
        timeout=560,
    )
    _assert_two_processes_match(out, single_process_run, DEEPSPEED_TOLERANCE)


def test_ds_configs_are_valid_and_documented():
    readme = (PROJECT_ROOT / "configs" / "README.md").read_text(encoding="utf-8")

    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield key
            if isinstance(value, dict):
                yield from keys(value, prefix + key + ".")

    for name, stage in (("ds_config_zero2.json", 2), ("ds_config_zero3.json", 3)):
        config = json.loads((PROJECT_ROOT / "configs" / name).read_text(encoding="utf-8"))
        assert config["zero_optimization"]["stage"] == stage
        assert "scheduler" not in config  # Trainer's --lr_scheduler_type must apply (the seed's WarmupLR never decays)
        missing = {
            key
            for key in keys(config)
            if f"`{key}`" not in readme and f"`{key}." not in readme and f".{key}`" not in readme
        }
        assert not missing, f"{name}: fields not explained in configs/README.md: {sorted(missing)}"
