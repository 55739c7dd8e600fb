"""The GPU profile: every notebook on a CUDA device with a real model (``make test-gpu``).

    python scripts/test_gpu.py                        # Qwen/Qwen2.5-0.5B if it is in the local HF cache, else a stand-in
    python scripts/test_gpu.py --model /path/to/model # any local Qwen2/Llama folder or cached hub name

Each notebook is executed by ``scripts/run_notebooks.py --profile gpu`` (parameters from
``configs/notebook_profiles.json``): every checkpoint cell asserts its lesson on the real model. The stored CPU outputs
are *not* compared on a GPU (bf16 kernels and another model print other numbers), so strict nbval is a CPU-only test;
here a notebook passes when it runs top to bottom with all its assertions, which is what ``pytest --nbval-lax`` checks,
plus the papermill parameters nbval cannot pass. The summary (``build/gpu/summary.md``) has seconds, the measured
peak GPU memory (nvidia-smi) and the memory each notebook predicted for itself. Exit status 1 if any notebook fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B"


def cached_hub_model(name: str) -> bool:
    """True when ``name``'s config and weights are in the local Hugging Face cache (no network needed)."""
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"default: {DEFAULT_MODEL} when cached, else a stand-in built here")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("make test-gpu needs a CUDA GPU (torch.cuda.is_available() is False); on CPU run `make test`.")
        return 2
    model = args.model
    if model is None:
        if cached_hub_model(DEFAULT_MODEL):
            model = DEFAULT_MODEL
        else:
            from course_utils import models

            model = str(models.build_standin(ROOT / "build" / "standin-qwen2-instruct", "qwen2-instruct"))
            print(f"{DEFAULT_MODEL} is not in the local cache: using the stand-in {model} on CUDA")
    print(f"GPU: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}; MODEL={model}")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "run_notebooks.py"),
        "--profile",
        "gpu",
        "--model",
        model,
        "--out",
        str(args.out),
        *map(str, args.notebooks),
    ]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
