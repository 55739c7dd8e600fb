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
    [({}, "local"), ({"COLAB_RELEASE_TAG": "x"}, "colab"), ({"AutoDLContainerUUID": "1"}, "autodl"),
     ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle")],
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


def test_precision_choice(monkeypatch):
    cpu = env.pick_precision("cpu")
    assert cpu.dtype == torch.float32 and not cpu.bf16 and not cpu.fp16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    t4 = env.pick_precision("cuda")
    assert t4.fp16 and t4.needs_grad_scaler and t4.dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    ampere = env.pick_precision("cuda")
    assert ampere.bf16 and not ampere.fp16 and not ampere.needs_grad_scaler
    assert env.trainer_precision_kwargs("cpu") == {"bf16": False, "fp16": False}


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
