from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from course_utils import memory, models, tokenizer


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = ["The capital of Foo is Bar. 你好，世界。 3 + 4 = 7"] * 50
    return tokenizer.train_tiny_tokenizer(texts, vocab_size=300)


def test_tiny_config_uses_tokenizer_ids(small_tokenizer):
    config = models.tiny_config(small_tokenizer)
    assert config.vocab_size == len(small_tokenizer)
    assert config.pad_token_id == small_tokenizer.pad_token_id == 3
    assert config.eos_token_id == small_tokenizer.eos_token_id == 2
    assert config.model_type == "qwen2" and config.tie_word_embeddings


def test_build_model_is_seeded_and_counts_match_formula(small_tokenizer):
    a = models.build_model("tiny", small_tokenizer, seed=1)
    b = models.build_model("tiny", small_tokenizer, seed=1)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    assert a.num_parameters() == models.count_parameters_formula(a.config)
    with pytest.raises(ValueError, match="unknown preset"):
        models.build_model("huge", small_tokenizer)


# fmt: off
@pytest.mark.parametrize("config", [
    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False),
    Qwen2Config(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=4, tie_word_embeddings=True),
    Qwen2Config(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, tie_word_embeddings=False),
])
# fmt: on
def test_parameter_formula_matches_transformers(config):
    assert models.count_parameters_formula(config) == AutoModelForCausalLM.from_config(config).num_parameters()


def test_qwen25_05b_formula_matches_published_size():
    # Qwen2.5-0.5B's sizes (memory.ARCHITECTURES, copied from its config.json): 494,032,768 parameters, tied embeddings.
    config = Qwen2Config(**memory.ARCHITECTURES["Qwen2.5-0.5B"])
    assert models.count_parameters_formula(config) == 494_032_768


def test_tiny_base_loads_offline_and_predicts():
    if not (models.TINY_BASE_DIR / "model.safetensors").exists():
        pytest.fail("data_samples/tiny_base is missing: run python scripts/make_tiny_base.py")
    model, tok = models.load_model_and_tokenizer("tiny-base")
    assert model.num_parameters() == models.count_parameters_formula(model.config)
    assert model.config.vocab_size == len(tok)
    batch = tok(["The capital of"], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (1, batch["input_ids"].shape[1], len(tok))


def test_hub_model_needs_network_offline():
    with pytest.raises(OSError):
        models.load_model_and_tokenizer("Qwen/Qwen2.5-0.5B")
    assert models.is_local_model("tiny") and not models.is_local_model("Qwen/Qwen2.5-0.5B")


def test_autotokenizer_reload_gives_identical_ids():
    """transformers 5 rebuilds any tokenizer saved next to a qwen2 config as Qwen2Tokenizer (Qwen's
    pre-tokenizer regex); the tiny tokenizer uses that exact pipeline, so AutoTokenizer must not change ids."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from course_utils import DATA_DIR

    raw = Tokenizer.from_file(str(models.TINY_BASE_DIR / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(models.TINY_BASE_DIR))
    with open(DATA_DIR / "pretrain_corpus.jsonl", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for _, line in zip(range(500), handle)]
    texts += ["  two  spaces\n\nnew", "ＡＢＣ１２３", "<|im_start|>user\nhi<|im_end|>\n<|pad|>"]
    for text in texts:
        assert auto(text)["input_ids"] == raw.encode(text).ids, text
    assert (auto.pad_token, auto.eos_token) == ("<|pad|>", "<|im_end|>")


#: A full re-run of a committed SFT recipe (LoRA r=8 on every linear layer, lr 1e-2) reproduces its loss history to 4
#: decimals on the machine type that built it (measured: the committed run and bench_outcomes' seed-0 run, identical).
#: Other CPU kernels change the floating-point summation order: with ATEN_CPU_CAPABILITY=default on the build machine
#: the losses agree to 4e-4 through step 50, then drift by up to 0.016 (steps 75-200) and 0.003 at step 300.
REBUILD_EXACT_UNTIL_STEP = 50
REBUILD_LOSS_TOLERANCE = 0.1
#: Held-out accuracy after a drifted trajectory (same run, ATEN_CPU_CAPABILITY=default): 0.787 vs 0.847 overall,
#: capital -0.13 and first_letter -0.15 (60 items per task). Seeds move it far more (0.85 / 0.69 / 0.47: the
#: arithmetic tasks collapse in two of three), so a rebuild that lands on another branch of that fork fails here.
REBUILD_ACCURACY_TOLERANCE = 0.1
REBUILD_TASK_TOLERANCE = 0.25


def _rerun(run_script, args: list[str], timeout: int) -> dict:
    """Run a committed model's recipe (``scripts/...`` plus flags) in a clean child environment; its metadata.json."""
    import json

    run_script(args, timeout=timeout)
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "metadata.json").read_text(encoding="utf-8"))


def _assert_history_matches(rebuilt: dict, committed: dict, label: str) -> None:
    assert rebuilt["data"] == committed["data"], label  # the same data files, byte for byte
    """Same logged steps; losses to 1e-3 through REBUILD_EXACT_UNTIL_STEP, within REBUILD_LOSS_TOLERANCE after it."""
    assert [s for s, _ in rebuilt["train_loss_history"]] == [s for s, _ in committed["train_loss_history"]]
    for (step, new), (_, old) in zip(rebuilt["train_loss_history"], committed["train_loss_history"]):
        tolerance = 1e-3 if step <= REBUILD_EXACT_UNTIL_STEP else REBUILD_LOSS_TOLERANCE
        assert abs(new - old) <= tolerance, (label, step, new, old)
    assert rebuilt["final_train_loss"] == rebuilt["train_loss_history"][-1][1] < rebuilt["mean_train_loss"]


@pytest.mark.parametrize("name", ["tiny-base", "tiny-sft", "tiny-sft-all-tokens"])
def test_committed_model_metadata_fingerprints_todays_data(name):
    """Each committed model's metadata.json has train.write_metadata's layout (the one writer of every script) and
    its data fingerprints are today's files: a regenerated data file shows here before a rebuild test is run."""
    import json

    from course_utils import PROJECT_ROOT
    from course_utils.train import file_sha256

    metadata = json.loads((models.LOCAL_MODELS[name] / "metadata.json").read_text(encoding="utf-8"))
    assert list(metadata)[:4] == ["arguments", "data", "git_commit", "versions"] and metadata["data"], name
    for entry in metadata["data"]:
        path = PROJECT_ROOT / entry["path"]
        assert (entry["bytes"], entry["sha256"]) == (path.stat().st_size, file_sha256(path)), (name, entry["path"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-sft", "tiny-sft-all-tokens"])
def test_committed_sft_model_is_rebuilt_by_its_recipe(name, tmp_path, run_script):
    """`metadata.json`'s command re-run from scratch gives the committed loss history and held-out accuracy."""
    import json

    committed = json.loads((models.LOCAL_MODELS[name] / "metadata.json").read_text(encoding="utf-8"))
    command = committed["command"].split()
    assert command[:2] == ["python", "scripts/sft.py"] and models.REBUILD_COMMANDS[name] == committed["command"]
    rebuilt = _rerun(run_script, [*command[1:], "--output_dir", str(tmp_path / "out")], timeout=1800)
    _assert_history_matches(rebuilt, committed, name)
    for task, old in committed["task_accuracy"]["after"].items():
        tolerance = REBUILD_ACCURACY_TOLERANCE if task == "all" else REBUILD_TASK_TOLERANCE
        assert abs(rebuilt["task_accuracy"]["after"][task] - old) <= tolerance, (name, task, rebuilt["task_accuracy"])


def _first_steps_record() -> dict:
    import json

    from course_utils import DATA_DIR, sft

    return json.loads((DATA_DIR / sft.FIRST_STEPS_FILE).read_text(encoding="utf-8"))


def test_sft_first_steps_record_is_current_and_bridges_to_the_committed_run(load_script):
    """data_samples/sft_first_steps.json (notebook 06's live check) comes from today's recipe, base weights and data,
    logs every one of its steps, and its mean is the loss the committed tiny-sft logged at that step (Trainer logs
    interval means): a few live steps matching the record reproduce the start of the committed run."""
    import json

    from course_utils import train

    script, record = load_script("bench_outcomes"), _first_steps_record()
    assert record["command"] == "python scripts/bench_outcomes.py --dpo_steps 0 --sft_first_steps"
    assert list(record["inputs_sha256"]) == script.sft_first_steps_inputs()
    assert not train.stale_inputs(record)
    steps = script.SFT_FIRST_STEPS["steps"]
    assert [step for step, _ in record["loss_history"]] == list(range(1, steps + 1)) and record["steps"] == steps
    committed = json.loads((models.LOCAL_MODELS["tiny-sft"] / "metadata.json").read_text(encoding="utf-8"))
    assert models.REBUILD_COMMANDS["tiny-sft"] == f"python scripts/sft.py {script.SFT_FIRST_STEPS['recipe']}"
    mean = sum(loss for _, loss in record["loss_history"]) / steps
    assert abs(mean - dict(committed["train_loss_history"])[steps]) < 2e-4


@pytest.mark.slow
def test_committed_sft_first_steps_are_rebuilt_by_their_command(load_script, tmp_path):
    """The record's run (scripts/sft.py stopped after 25 steps, about 30 s) gives the same per-step losses (to 1e-3:
    the committed SFT history agrees that closely through step 50 even with other CPU kernels)."""
    rebuilt = load_script("bench_outcomes").sft_first_steps(tmp_path)
    committed = _first_steps_record()
    assert rebuilt["run"] == committed["run"] and rebuilt["inputs_sha256"] == committed["inputs_sha256"]
    for (step, new), (old_step, old) in zip(rebuilt["loss_history"], committed["loss_history"], strict=True):
        assert step == old_step and abs(new - old) <= 1e-3, (step, new, old)


@pytest.mark.slow
def test_committed_tiny_base_is_rebuilt_by_its_recipe(tmp_path, run_script):
    """`python scripts/make_tiny_base.py` (3000 steps, about 12 minutes on 2 cores) gives the committed tokenizer byte
    for byte, the committed loss history and the held-out loss. Measured for the earlier 1500-step recipe on another
    machine than the one that built it: 1e-4 at step 100, at most 0.055 later (steps 900-1000), eval loss 0.9456 vs
    0.9273."""
    import json

    base = models.LOCAL_MODELS["tiny-base"]
    committed = json.loads((base / "metadata.json").read_text(encoding="utf-8"))
    assert committed["command"].strip() == models.REBUILD_COMMANDS["tiny-base"]
    out = tmp_path / "base"
    rebuilt = _rerun(run_script, ["scripts/make_tiny_base.py", "--output_dir", str(out)], timeout=3600)
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    _assert_history_matches(rebuilt, committed, "tiny-base")
    assert abs(rebuilt["eval_loss"] - committed["eval_loss"]) <= 0.05


def _peft_record() -> dict:
    import json

    from course_utils import DATA_DIR

    return json.loads((DATA_DIR / "peft_comparison.json").read_text(encoding="utf-8"))


def test_peft_comparison_record_is_current(load_script):
    """data_samples/peft_comparison.json (notebook 07's fitted table) was made from today's task files and grid, and
    each method's rate is the one its validation accuracy picked (then the lower validation loss), never the test."""
    from course_utils import DATA_DIR
    from course_utils.train import file_sha256

    record, script = _peft_record(), load_script("bench_peft")
    assert record["command"].startswith("python scripts/bench_peft.py --fit_lr ")
    assert record["data_sha256"] == {name: file_sha256(DATA_DIR / name) for name in record["data_sha256"]}
    assert record["fit_grid"] == {m: list(lrs) for m, lrs in script.FIT_GRID.items()}
    for method, result in record["methods"].items():
        best = max(result["grid"], key=lambda g: (g["validation_accuracy"], -g["validation_loss"]))
        assert result["lr"] == best["lr"] and result["test_accuracy"] == best["test_accuracy"], method
    assert record["num_train_rows"] + record["num_validation_rows"] == 1200


@pytest.mark.slow
def test_committed_peft_comparison_is_rebuilt_by_its_recipe(tmp_path, run_script):
    """The record's command, re-run for the under-2 % LoRA (three rates, about 3 minutes on 2 cores), gives the fitted
    rate and every smaller rate within 0.05 of the committed validation and test accuracy (300 test rows), and the
    same fitted rate.

    Rates above the fitted one sit at the edge of stability and are not reproducible across CPU kernels: 3e-2 gave
    validation 0.52 with this machine's native (AVX-512) kernels when the record was made, and diverged (0.00-0.02,
    loss 3.5-3.8) with ``ATEN_CPU_CAPABILITY=avx2``, ``=default`` and on the CI machine. For those the test checks
    only what the fit depends on: they stay below the fitted rate's validation accuracy."""
    import json

    record, method = _peft_record(), "lora-all/r2+tokens"
    args = record["command"].split()[1:]
    rebuild = ["--record", str(tmp_path / "record.json"), "--methods", method, "--output_dir", str(tmp_path / "out")]
    args = args[: args.index("--record")] + rebuild
    run_script(args)
    rebuilt = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["methods"][method]
    committed = record["methods"][method]
    assert rebuilt["trainable_params"] == committed["trainable_params"]
    fitted = next(p for p in rebuilt["grid"] if p["lr"] == committed["lr"])
    for new, old in zip(rebuilt["grid"], committed["grid"], strict=True):
        assert new["lr"] == old["lr"]
        if new["lr"] > committed["lr"]:  # edge of stability: only "not better than the fitted rate" is reproducible
            assert new["validation_accuracy"] <= fitted["validation_accuracy"] + 0.05, (new, fitted)
            continue
        assert abs(new["validation_accuracy"] - old["validation_accuracy"]) <= 0.05, (new, old)
        assert abs(new["test_accuracy"]["all"] - old["test_accuracy"]["all"]) <= 0.05, (new, old)
    # the fitted rate: the same, or one whose committed validation accuracy is within the tolerance of the best
    best = max(point["validation_accuracy"] for point in committed["grid"])
    assert next(p for p in committed["grid"] if p["lr"] == rebuilt["lr"])["validation_accuracy"] >= best - 0.05
