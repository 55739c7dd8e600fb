"""Environment: platform detection, offline settings, seeding, device/dtype choice, version checks.

Import this module (and call :func:`setup_offline`) before importing transformers or deepspeed in a
notebook: DeepSpeed prints a timestamped line to stdout unless ``DS_ACCELERATOR`` is set first.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils import PROJECT_ROOT

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import torch

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_VERSION_CHECK": "1",
}

#: Set to 1 by the project's runner, ``make nbval`` and the tests: no progress bars (stored outputs and CI logs stay
#: clean). Unset when a person runs a notebook, who then sees tqdm bars for training, downloads and dataset maps.
HEADLESS_VAR = "WORKBOOK_HEADLESS"
#: What headless mode sets: progress bars are not deterministic output (nbval compares stored outputs).
HEADLESS_ENV: dict[str, str] = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def headless() -> bool:
    """True when the notebook runs unattended (runner, nbval, tests): then no progress bars anywhere."""
    return os.environ.get(HEADLESS_VAR, "") not in ("", "0")


def progress_bars() -> bool:
    """Progress bars of datasets, transformers (weights loading) and the Hub on for a person, off when headless.
    Returns whether they are on; pass ``disable_tqdm=env.headless()`` to ``TrainingArguments`` the same way."""
    import datasets
    import transformers

    on = not headless()
    if on:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    _plain_tqdm_bars(on)
    return on


def quiet_trainer(trainer: Any) -> Any:
    """Remove the callback that prints ``{'loss': ...}`` dicts (timings differ run to run) and, when headless, the
    progress bar; return the trainer (works for ``Trainer`` and every TRL trainer)."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if headless():
        trainer.remove_callback(ProgressCallback)
    return trainer


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") and info logs inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


#: Modules that draw a bar with plain ``tqdm`` instead of their library's switchable one (transformers' GGUF loader:
#: "Converting and de-quantizing GGUF tensors"); ``progress_bars`` switches them with the others.
PLAIN_TQDM_MODULES: tuple[str, ...] = ("transformers.modeling_gguf_pytorch_utils",)


def _plain_tqdm_bars(on: bool) -> None:
    import functools
    import importlib

    for name in PLAIN_TQDM_MODULES:
        module = importlib.import_module(name)
        original = getattr(module.tqdm, "_course_original", module.tqdm)
        if on:
            module.tqdm = original
        else:
            module.tqdm = functools.partial(original, disable=True)
            module.tqdm._course_original = original


#: Variables a distributed launcher (torchrun, accelerate, deepspeed) sets for each process. A process that
#: inherits stale ones tries to rendezvous with a group that does not exist.
LAUNCHER_ENV_VARS: tuple[str, ...] = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def as_bool(value: object) -> bool:
    """A notebook parameter as a boolean: ``True``/``False``, or the strings papermill's ``-p`` passes
    (``"false"``, ``"0"``, ``"no"``, ``"off"`` are False; ``"true"``, ``"1"``, ``"yes"``, ``"on"`` are True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"cannot read {value!r} as a boolean (use true or false)")


HUB_OFFLINE_KEYS: tuple[str, ...] = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child process (a launcher, the notebook runner), without the launcher
    variables a stale parent may hold, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}, **extra}


def setup_offline(offline: object = True, ds_accelerator: str | None = "auto") -> dict[str, str]:
    """Set the environment variables for an offline, CPU-safe run and return what was set.

    ``offline`` is a notebook parameter (a bool, or papermill's string ``"false"``). ``offline=False`` is an
    explicit choice: it *removes* the Hub offline switches even when the shell (``make``, the runner) set them,
    so that ``-p OFFLINE false`` really lets transformers download. ``ds_accelerator="auto"`` sets
    ``DS_ACCELERATOR=cpu`` only on a machine without CUDA (DeepSpeed picks the GPU itself otherwise); ``None``
    leaves it alone. Other existing values set by the user are kept.
    """
    offline = as_bool(offline)
    wanted = dict(OFFLINE_ENV)
    if not offline:
        for key in HUB_OFFLINE_KEYS:
            wanted.pop(key)
            os.environ.pop(key, None)
    if ds_accelerator == "auto":
        import torch

        ds_accelerator = None if torch.cuda.is_available() else "cpu"
    if ds_accelerator is None:
        wanted.pop("DS_ACCELERATOR")
    else:
        wanted["DS_ACCELERATOR"] = ds_accelerator
    if headless():
        wanted.update(HEADLESS_ENV)
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted}


def limit_cpu_threads(device: "torch.device | str", threads: int = 2) -> int:
    """On CPU, use at most ``threads`` intra-op threads (the 2-core budget of the workbook); on a GPU leave torch's
    default (the data pipeline and the optimizer step of a CPU fallback deserve every core). Returns the count."""
    import torch

    if str(device).startswith("cpu"):
        torch.set_num_threads(max(1, min(threads, torch.get_num_threads())))
    return torch.get_num_threads()


def detect_platform() -> str:
    """Return ``"colab"``, ``"autodl"``, ``"kaggle"`` or ``"local"``."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG") or os.environ.get("COLAB_GPU"):
        return "colab"
    if os.environ.get("AutoDLContainerUUID") or Path("/root/autodl-tmp").exists():
        return "autodl"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle"
    return "local"


def seed_everything(seed: int = 0, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally ask torch for deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False


def pick_device(preference: str = "auto") -> "torch.device":
    """Resolve ``"auto"`` to cuda, then mps, then cpu; any other string is passed to ``torch.device``."""
    import torch

    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class PrecisionChoice:
    """What precision to train in on a device, and why."""

    dtype: "torch.dtype"
    bf16: bool
    fp16: bool
    needs_grad_scaler: bool
    reason: str


def pick_precision(device: "torch.device | str") -> PrecisionChoice:
    """Choose the training precision for ``device``: bf16 where the GPU computes it natively (compute capability
    >= 8.0; ``torch.cuda.is_bf16_supported()`` counts emulation and says True on a T4, so it does not decide),
    fp16 + a gradient scaler on older GPUs (T4, V100), fp32 on CPU and MPS. Weights and optimizer stay fp32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        if major >= 8:
            return PrecisionChoice(
                torch.bfloat16, True, False, False, f"CUDA GPU, compute capability {major}.{minor} >= 8.0: native bf16"
            )
        return PrecisionChoice(
            torch.float16,
            False,
            True,
            True,
            f"CUDA GPU, compute capability {major}.{minor} < 8.0 (e.g. T4): fp16 + GradScaler",
        )
    return PrecisionChoice(torch.float32, False, False, False, f"{device.type}: fp32")


def trainer_precision_kwargs(device: "torch.device | str") -> dict[str, bool]:
    """``bf16``/``fp16`` keyword arguments for ``TrainingArguments`` on ``device``."""
    choice = pick_precision(device)
    return {"bf16": choice.bf16, "fp16": choice.fp16}


def trainer_defaults(device: "torch.device | str" = "auto", seed: int = 0) -> dict[str, Any]:
    """The ``TrainingArguments`` fields every training run of the course sets beyond transformers' defaults.

    No checkpoints, no evaluation, no reporting, no progress bar when headless (``env.headless()``), the
    sampler seeded with ``seed``, and the precision of ``device`` (``env.trainer_precision_kwargs``: bf16 where the
    GPU computes it natively, fp16 + gradient scaler on a T4, fp32 on CPU). ``scripts/sft.py`` puts them under its
    YAML file and command line, ``sft.training_arguments`` under its keywords, ``preference.quiet_trainer_kwargs``
    under TRL's changes.
    """
    resolved = pick_device(device or "auto")
    return {
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "data_seed": seed,
        "disable_tqdm": headless(),
        "use_cpu": resolved.type == "cpu",
        **trainer_precision_kwargs(resolved),
    }


def read_pins(pyproject: Path | None = None) -> dict[str, str]:
    """Read the ``name==version`` pins from the project's ``pyproject.toml`` (dependencies only)."""
    import tomllib

    pyproject = pyproject or PROJECT_ROOT / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    pins: dict[str, str] = {}
    for requirement in data["project"]["dependencies"]:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", requirement)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def _base_version(version: str) -> str:
    return version.split("+", 1)[0]


def check_versions(pins: dict[str, str] | None = None, verbose: bool = True) -> dict[str, tuple[str, str, bool]]:
    """Compare installed package versions with the pins; print OK/FAIL per package.

    Returns ``{package: (pinned, installed, ok)}``. A local build tag (``2.13.0+cpu``) matches ``2.13.0``.
    """
    pins = pins if pins is not None else read_pins()
    rows: dict[str, tuple[str, str, bool]] = {}
    for name, pinned in sorted(pins.items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        ok = _base_version(installed) == _base_version(pinned)
        rows[name] = (pinned, installed, ok)
        if verbose:
            print(f"{'OK  ' if ok else 'FAIL'} {name:<18} pinned {pinned:<10} installed {installed}")
    return rows


def describe(device: "torch.device | None" = None) -> dict[str, str]:
    """A small dictionary describing the machine, for the environment notebook and model cards."""
    import torch

    device = device or pick_device()
    info = {
        "platform": detect_platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cuda_available": str(torch.cuda.is_available()),
        "precision": pick_precision(device).reason,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record_key_figure(name: str, value: float | int | str) -> None:
    """Record the figure a notebook reports (final loss, accuracy, ...) for ``make workbook``'s summary.

    Writes to ``$WORKBOOK_METRICS_FILE`` (a JSON object) when the runner sets it; otherwise does nothing.
    """
    path = os.environ.get("WORKBOOK_METRICS_FILE")
    if not path:
        return
    target = Path(path)
    data = json.loads(target.read_text(encoding="utf-8")) if target.exists() else {}
    data[name] = value
    target.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def cache_dir() -> Path:
    """The project's cache folder (``$COURSE_CACHE`` or ``<repo>/.cache``), created on demand."""
    path = Path(os.environ.get("COURSE_CACHE", PROJECT_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
