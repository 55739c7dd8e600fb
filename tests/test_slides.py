"""Code on a slide never rots: included blocks equal their sources, every other python block runs."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_slides  # noqa: E402

DECKS = build_slides.decks()


@pytest.mark.parametrize("deck", DECKS, ids=[d.name for d in DECKS])
def test_included_code_matches_its_source(deck):
    stale = build_slides.sync(deck, write=False)
    assert not stale, f"stale slide code (run `python scripts/build_slides.py --sync`): {stale}"


@pytest.mark.parametrize("deck", DECKS, ids=[d.name for d in DECKS])
def test_slide_code_runs(deck, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"slide_{deck.stem}"}
    for number, block in enumerate(build_slides.executable_blocks(deck), start=1):
        try:
            exec(compile(block, f"{deck.name}[block {number}]", "exec"), namespace)
        except Exception as exc:  # name the deck and block in the failure
            pytest.fail(f"{deck.name} python block {number} failed: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("deck", DECKS, ids=[d.name for d in DECKS])
def test_deck_is_marp_with_theme_and_notes(deck):
    text = deck.read_text(encoding="utf-8")
    assert text.startswith("---\nmarp: true") and "theme: workbook" in text.split("---", 2)[1]
    assert "<!--" in text, "presenter notes (HTML comments) expected"
    for figure in build_slides.re.findall(r"\]\((figures/[^)\s]+)\)", text):
        assert (ROOT / "slides" / figure).exists(), f"{deck.name}: missing {figure}"
