#!/usr/bin/env python
"""Generate the course's sample data (deterministic for a given seed).

Usage (from the repository root):
    python scripts/generate_data.py --seed 0 --out data_samples/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from course_utils.datagen import DEFAULT_SEED, generate_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("data_samples"), help="output folder (default data_samples/)")
    parser.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1.0 = committed data)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_all(args.out, seed=args.seed, scale=args.scale)
    total = 0
    for path in paths.values():
        size = path.stat().st_size
        total += size
        rows = path.read_bytes().count(b"\n") if path.suffix == ".jsonl" else "-"
        print(f"{str(path):55s} {size:>10,d} B  rows={rows}")
    print(f"total {total:,} bytes in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
