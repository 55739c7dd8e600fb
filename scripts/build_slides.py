"""Build the Marp lecture decks in ``slides/`` and keep their code in step with the workbook.

    python scripts/build_slides.py            # sync included code, then HTML (+ PDF with a local Chromium) to build/slides/
    python scripts/build_slides.py --check    # fail if an included code block differs from its source (used by tests)
    python scripts/build_slides.py --sync     # rewrite included code blocks from their sources, build nothing

A code block on a slide is either *included* or *executed by a test* (``tests/test_slides.py``). An included
block is preceded by a marker naming its source, and its body is the source's current text:

    <!-- include: course_utils/loss.py::causal_lm_loss -->      a function or class of a module
    <!-- include: notebooks/04_loss_and_label_shift.ipynb::tag=slide-shift -->   a notebook cell tagged slide-shift
    <!-- include: course_utils/loss.py::L10-L24 -->              a line range

Every other ```python block is executed, in order, in one namespace per deck, by ``tests/test_slides.py``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLIDES = ROOT / "slides"
OUT = ROOT / "build" / "slides"
INCLUDE = re.compile(r"<!-- include: (?P<path>[^:\s]+)::(?P<what>\S+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
CODE_BLOCK = re.compile(r"```python\n(?P<body>.*?)```", re.S)


def decks() -> list[Path]:
    """The deck sources: ``slides/NN_*.md``."""
    return sorted(SLIDES.glob("[0-9][0-9]*.md"))


def source_of(path: str, what: str) -> str:
    """The current text of an include target (function/class, tagged notebook cell, or line range)."""
    file = ROOT / path
    if not file.exists():
        raise FileNotFoundError(f"include target {path} does not exist")
    if file.suffix == ".ipynb":
        if not what.startswith("tag="):
            raise ValueError(f"{path}: notebook includes need ::tag=<cell tag>")
        tag = what[4:]
        cells = [
            c
            for c in json.loads(file.read_text(encoding="utf-8"))["cells"]
            if tag in c.get("metadata", {}).get("tags", [])
        ]
        if len(cells) != 1:
            raise ValueError(f"{path}: {len(cells)} cells tagged {tag!r}, expected 1")
        lines = "".join(cells[0]["source"]).splitlines()
        return "\n".join(line for line in lines if not line.startswith("# NBVAL")).strip("\n") + "\n"
    text = file.read_text(encoding="utf-8")
    match = re.fullmatch(r"L(\d+)-L(\d+)", what)
    if match:
        start, end = int(match.group(1)), int(match.group(2))
        return "\n".join(text.splitlines()[start - 1 : end]) + "\n"
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == what:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "\n".join(text.splitlines()[start - 1 : node.end_lineno]) + "\n"
    raise ValueError(f"{path}: no function or class named {what!r}")


def sync(deck: Path, write: bool) -> list[str]:
    """Bring the included blocks of ``deck`` up to date; return the stale ones (and write them if asked)."""
    text = deck.read_text(encoding="utf-8")
    stale: list[str] = []

    def replace(match: re.Match) -> str:
        current = source_of(match.group("path"), match.group("what"))
        if current != match.group("body"):
            stale.append(f"{deck.name}: {match.group('path')}::{match.group('what')}")
        return f"<!-- include: {match.group('path')}::{match.group('what')} -->\n```{match.group('lang')}\n{current}```"

    new = INCLUDE.sub(replace, text)
    if write and new != text:
        deck.write_text(new, encoding="utf-8")
    return stale


def executable_blocks(deck: Path) -> list[str]:
    """The ```python blocks of a deck that are not includes (``tests/test_slides.py`` runs them)."""
    text = deck.read_text(encoding="utf-8")
    included = {m.start("body") for m in INCLUDE.finditer(text)}
    blocks = []
    for match in CODE_BLOCK.finditer(text):
        if match.start("body") not in included:
            blocks.append(match.group("body"))
    return blocks


def find_chromium() -> str | None:
    """A local Chromium/Chrome for PDF export, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build(pdf: bool) -> int:
    """Install Marp (npm ci, pinned in slides/package-lock.json) and build every deck to HTML (and PDF)."""
    npm = shutil.which("npm")
    if npm is None:
        print("npm not found: install Node.js 18+ to build the slides", file=sys.stderr)
        return 1
    marp = SLIDES / "node_modules" / ".bin" / "marp"
    if not marp.exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SLIDES, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if (SLIDES / "figures").exists():
        shutil.copytree(SLIDES / "figures", OUT / "figures", dirs_exist_ok=True)
    base = [str(marp), "--theme-set", str(SLIDES / "theme"), "--html", "--allow-local-files"]
    environ = dict(os.environ)
    chromium = find_chromium()
    if chromium:
        environ["CHROME_PATH"] = chromium
    status = 0
    for deck in decks():
        target = OUT / f"{deck.stem}.html"
        result = subprocess.run([*base, str(deck), "-o", str(target)], env=environ, capture_output=True, text=True)
        print(f"{deck.name} -> {target.relative_to(ROOT)}: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            status = 1
        if pdf and chromium:
            result = subprocess.run(
                [*base, "--pdf", str(deck), "-o", str(OUT / f"{deck.stem}.pdf")],
                env=environ,
                capture_output=True,
                text=True,
            )
            print(f"{deck.name} -> PDF: {'ok' if result.returncode == 0 else 'FAILED'}")
    if pdf and not chromium:
        print("no local Chromium: PDF skipped (HTML built)")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if an included block is stale")
    parser.add_argument("--sync", action="store_true", help="update included blocks, build nothing")
    parser.add_argument("--no-pdf", action="store_true", help="HTML only")
    args = parser.parse_args()
    stale = [entry for deck in decks() for entry in sync(deck, write=not args.check)]
    if args.check:
        for entry in stale:
            print(f"stale include: {entry}")
        return 1 if stale else 0
    if args.sync:
        print(f"{len(stale)} include(s) updated")
        return 0
    return build(pdf=not args.no_pdf)


if __name__ == "__main__":
    sys.exit(main())
