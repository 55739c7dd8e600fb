import json
import os

import pytest
import torch

from course_utils import env


def test_setup_offline_sets_and_keeps_user_values(monkeypatch):
    for key in env.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    values = env.setup_offline()
    assert values["HF_HUB_OFFLINE"] == "1"
    assert values["DS_ACCELERATOR"] == "cpu"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"  # the user's choice is kept


def test_setup_online_leaves_hub_reachable(monkeypatch):
    for key in env.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    values = env.setup_offline(offline=False, ds_accelerator=None)
    assert "HF_HUB_OFFLINE" not in values and "HF_HUB_OFFLINE" not in os.environ
    assert "DS_ACCELERATOR" not in os.environ


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({}, "local"),
        ({"COLAB_RELEASE_TAG": "x"}, "colab"),
        ({"AutoDLContainerUUID": "1"}, "autodl"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ],
)
def test_detect_platform(monkeypatch, variables, expected):
    for key in ("COLAB_RELEASE_TAG", "COLAB_GPU", "AutoDLContainerUUID", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    if expected == "local" and env.Path("/root/autodl-tmp").exists():
        pytest.skip("running on AutoDL")
    assert env.detect_platform() == expected


def test_seed_everything_repeats_random_streams():
    env.seed_everything(123)
    first = torch.rand(3)
    env.seed_everything(123)
    assert torch.equal(first, torch.rand(3))


def test_precision_choice_cpu():
    cpu = env.pick_precision("cpu")
    assert cpu.dtype == torch.float32 and not cpu.bf16 and not cpu.fp16
    assert env.trainer_precision_kwargs("cpu") == {"bf16": False, "fp16": False}


@pytest.mark.parametrize(
    "capability, expected",
    [
        ((7, 5), "fp16"),  # Tesla T4 (Colab): bf16 only emulated
        ((7, 0), "fp16"),  # V100
        ((8, 0), "bf16"),  # A100
        ((8, 9), "bf16"),  # L4 / RTX 4090
        ((9, 0), "bf16"),
    ],  # H100 / H200
)
def test_precision_follows_compute_capability(monkeypatch, capability, expected):
    """The real decision function on a simulated GPU: only the hardware query is replaced. torch 2.13's
    ``is_bf16_supported()`` says True on a T4 (it counts emulation), so it must not decide."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    choice = env.pick_precision("cuda")
    kwargs = env.trainer_precision_kwargs("cuda")
    if expected == "fp16":
        assert choice.fp16 and choice.needs_grad_scaler and choice.dtype == torch.float16 and not choice.bf16
        assert kwargs == {"bf16": False, "fp16": True}
        assert "GradScaler" in choice.reason
    else:
        assert choice.bf16 and not choice.fp16 and not choice.needs_grad_scaler and choice.dtype == torch.bfloat16
        assert kwargs == {"bf16": True, "fp16": False}


@pytest.mark.parametrize(
    "text, value",
    [
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("true", True),
        ("1", True),
        (True, True),
        (False, False),
        (0, False),
    ],
)
def test_as_bool_reads_papermill_strings(text, value):
    assert env.as_bool(text) is value


def test_as_bool_refuses_other_text():
    with pytest.raises(ValueError, match="boolean"):
        env.as_bool("maybe")


def test_setup_offline_false_removes_inherited_offline_switches(monkeypatch):
    for key in env.HUB_OFFLINE_KEYS:
        monkeypatch.setenv(key, "1")
    env.setup_offline(offline="false")
    assert not any(key in os.environ for key in env.HUB_OFFLINE_KEYS)
    env.setup_offline(offline=True)
    assert all(os.environ[key] == "1" for key in env.HUB_OFFLINE_KEYS)


def test_pick_device_auto_is_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("GPU machine")
    assert env.pick_device("auto").type in ("cpu", "mps")
    assert env.pick_device("cpu").type == "cpu"


def test_check_versions_against_pins(capsys):
    rows = env.check_versions()
    out = capsys.readouterr().out
    assert "torch" in rows and rows["torch"][0] == "2.13.0"
    assert all(ok for _, _, ok in rows.values()), out
    assert "OK" in out and "FAIL" not in out


def test_check_versions_reports_failures(capsys):
    rows = env.check_versions({"torch": "0.0.1", "surely-not-installed-pkg": "1.0"})
    assert rows["torch"][2] is False and rows["surely-not-installed-pkg"][1] == "missing"
    assert capsys.readouterr().out.count("FAIL") == 2


def test_record_key_figure(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    monkeypatch.setenv("WORKBOOK_METRICS_FILE", str(target))
    env.record_key_figure("loss", 1.5)
    env.record_key_figure("acc", 0.9)
    assert json.loads(target.read_text()) == {"loss": 1.5, "acc": 0.9}
    monkeypatch.delenv("WORKBOOK_METRICS_FILE")
    env.record_key_figure("ignored", 1)  # no file: no-op


def test_describe_has_device():
    info = env.describe()
    assert info["device"] in ("cpu", "cuda", "mps") and info["platform"]


def test_savefig_honours_the_figures_dir_override(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_utils import plotting

    monkeypatch.setenv("WORKBOOK_FIGURES_DIR", str(tmp_path / "figs"))
    fig, _ = plt.subplots()
    path = plotting.savefig(fig, "unit_test_plot")
    plt.close(fig)
    assert path == tmp_path / "figs" / "unit_test_plot.png" and path.stat().st_size > 0
    assert not (plotting.FIGURES_DIR / "unit_test_plot.png").exists()


def test_progress_bars_follow_headless_including_plain_tqdm(monkeypatch):
    """Headless: datasets', transformers' and plain-tqdm bars (transformers' GGUF loader) are off; on for a person."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv(env.HEADLESS_VAR, "1")
    assert env.progress_bars() is False
    assert not hf_logging.is_progress_bar_enabled() and gguf_utils.tqdm(range(2)).disable
    monkeypatch.delenv(env.HEADLESS_VAR)
    assert env.progress_bars() is True
    assert hf_logging.is_progress_bar_enabled() and not gguf_utils.tqdm(range(2), file=open(os.devnull, "w")).disable
    monkeypatch.setenv(env.HEADLESS_VAR, "1")
    env.progress_bars()
    env.progress_bars()  # twice in a row: still one level of wrapping
    assert gguf_utils.tqdm.func.__name__ != "partial" and gguf_utils.tqdm(range(2)).disable
