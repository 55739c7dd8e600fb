"""Shared test setup: offline, CPU-only DeepSpeed, quiet tokenizers; the repo importable without install."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WORKBOOK_HEADLESS", "1")  # no progress bars in test logs

import pytest  # noqa: E402

from course_utils.env import LAUNCHER_ENV_VARS  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_launcher_env():
    """No test may leave torch.distributed launcher variables behind for the tests after it (e.g.
    ``memory.single_process_deepspeed_env`` sets them in ``os.environ`` on purpose)."""
    before = {key: os.environ.get(key) for key in LAUNCHER_ENV_VARS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def load_script():
    """``load_script("bench_peft")``: a file of ``scripts/`` imported as a module (scripts are not a package)."""
    import importlib.util

    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load


@pytest.fixture(scope="module")
def tok():
    """The shared tiny tokenizer (300-token BPE on one repeated zh/en/arithmetic line) of the collate and loss tests;
    test files that need another vocabulary (lora, preference, evaluation) define their own ``tok``."""
    from course_utils import tokenizer

    corpus = ["The capital of Foo is Bar. 你好，世界。 3 + 4 = 7, 5 - 2 = 3 and Bar is Foo ok;"] * 50
    return tokenizer.train_tiny_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    """A seeded tiny Qwen2 model on ``tok``, in eval mode."""
    from course_utils import models

    m = models.build_model("tiny", tok, seed=0)
    m.eval()
    return m


@pytest.fixture()
def input_ids(tok):
    """A seeded (2, 12) batch of token ids of ``tok`` (whichever ``tok`` the test file uses), special tokens excluded."""
    import torch

    return torch.randint(4, len(tok), (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def run_script():
    """``run_script(args, timeout=1800, **env)``: ``python ARGS`` (a script of the repository and its flags) from the
    project root in a clean, offline child environment, as a committed record's command is re-run; asserts it
    succeeded (showing the end of its stderr) and returns the ``CompletedProcess``."""
    import subprocess
    import sys

    from course_utils import PROJECT_ROOT, env

    def run(args: list[str], timeout: int = 1800, **extra_env: str) -> subprocess.CompletedProcess:
        child_env = env.child_environment(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra_env)
        done = subprocess.run(
            [sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=child_env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    return run
