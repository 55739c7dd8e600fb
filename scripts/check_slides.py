"""Open every built deck in headless Chromium, screenshot each slide and report slides whose content overflows.

    python scripts/build_slides.py --no-pdf      # build/slides/NN_*.html first
    python scripts/check_slides.py               # screenshots in build/slides/screenshots/, exit 1 on overflow
    python scripts/check_slides.py build/slides/05_pretraining.html

A slide overflows when an element of its ``section`` (1280x720) lies above the slide, right of it, or below
``720 - FOOTER_BAND`` px (where it would cover the footer and page number), or when a code block (``pre``) is wider
than its box. Marp shrinks code blocks that do not fit (auto-scaling) instead of letting them overflow: a code
block shrunk below ``MIN_CODE_SCALE`` counts as overflowing too. Marp centres content vertically, so a too-tall slide spills out at the top as well as the bottom.
The browser is driven through the Chrome DevTools protocol (``websocket-client``, installed with Jupyter).
Without a local Chromium (CI has none) the check is skipped with a message and exit status 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_slides import find_chromium  # noqa: E402  (one definition, shared with the builder)

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "build" / "slides"
SHOTS = BUILT / "screenshots"
WIDTH, HEIGHT = 1280, 720
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
    "--remote-debugging-port=0",
    f"--window-size={WIDTH},{HEIGHT}",
]

MIN_CODE_SCALE = 0.8  # Marp shrinks a code block that does not fit; below this it is too small to read
FOOTER_BAND = 36  # px at the bottom of a slide kept for the footer and the page number

# Runs in the page with the current slide shown. Marp centres a slide's content vertically, so content that is
# too tall sticks out at the top AND the bottom: compare every element's box with the section's box instead of
# relying on scrollHeight (which misses the top). Coordinates are scaled back to slide pixels (1280x720).
MEASURE = (
    """(() => {
  const svgs = [...document.querySelectorAll('svg[data-marpit-svg]')];
  const out = [];
  svgs.forEach((svg, i) => {
    const s = svg.querySelector('section');
    if (!s || s.clientHeight === 0) return;
    const box = s.getBoundingClientRect();
    if (box.height === 0) return;
    const k = s.clientHeight / box.height;
    let top = 0, bottom = 0, right = 0;
    for (const e of s.querySelectorAll('*')) {
      if (e.closest('header, footer')) continue;
      const r = e.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      top = Math.max(top, (box.top - r.top) * k);
      bottom = Math.max(bottom, (r.bottom - box.bottom) * k + %d);
      right = Math.max(right, (r.right - box.right) * k);
    }
    const pre = [...s.querySelectorAll('pre, marp-pre')].map(p => p.scrollWidth - p.clientWidth).filter(d => d > 1);
    const scales = [...s.querySelectorAll('pre > code, marp-pre > code')].filter(c => c.offsetHeight > 0)
      .map(c => c.getBoundingClientRect().height * k / c.offsetHeight);
    out.push({index: i + 1, top: Math.round(top), bottom: Math.round(bottom), right: Math.round(right),
              pre: pre.length ? Math.max(...pre) : 0,
              scale: scales.length ? Math.round(100 * Math.min(...scales)) / 100 : 1,
              title: (s.querySelector('h1, h2') || {}).textContent || ''});
  });
  return JSON.stringify({count: svgs.length, visible: out});
})()"""
    % FOOTER_BAND
)
HIDE_CONTROLS = (
    "document.head.insertAdjacentHTML('beforeend', "
    "'<style>.bespoke-marp-osc, .bespoke-progress-parent {display: none !important}</style>')"
)


class Page:
    """A minimal Chrome DevTools protocol client for one page target."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")


def start_browser(chromium: str, profile: str) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium; return the process and the websocket URL of its first page."""
    process = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = Path(profile) / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            break
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("Chromium did not open its DevTools port")
    port = port_file.read_text().split()[0]
    for _ in range(100):
        try:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return process, pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("no page target in Chromium")


def check_deck(page: Page, html: Path, shots: Path) -> list[str]:
    """Screenshot every slide of ``html``; return one line per overflowing slide."""
    page.call("Page.navigate", url=html.resolve().as_uri())
    for _ in range(200):
        if page.evaluate("document.readyState") == "complete":
            break
        time.sleep(0.05)
    page.evaluate("document.fonts.ready.then(() => true)")
    page.evaluate(HIDE_CONTROLS)
    count = json.loads(page.evaluate(MEASURE))["count"]
    problems = []
    for number in range(1, count + 1):
        page.evaluate(f"location.hash = '#{number}'")
        time.sleep(0.25)
        visible = json.loads(page.evaluate(MEASURE))["visible"]
        for slide in visible:
            if slide["index"] != number:
                continue
            if slide["scale"] < MIN_CODE_SCALE:
                problems.append(
                    f"{html.name} slide {number} ({slide['title'].strip()[:40]}): code shrunk to "
                    f"{slide['scale']:.0%} by Marp's auto-scaling (too small to read)"
                )
            if max(slide["top"], slide["bottom"], slide["right"], slide["pre"]) > 1:
                problems.append(
                    f"{html.name} slide {number} ({slide['title'].strip()[:40]}): "
                    f"{slide['top']}px above, {slide['bottom']}px into the footer band or below, "
                    f"{slide['right']}px right, code {slide['pre']}px too wide"
                )
        shot = page.call("Page.captureScreenshot", format="png")
        (shots / f"{html.stem}_{number:02d}.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"{html.name}: {count} slides, {sum(p.startswith(html.name) for p in problems)} overflowing")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("decks", nargs="*", type=Path, help="built HTML decks (default: build/slides/[0-9]*.html)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("check_slides: no local Chromium found - overflow check skipped")
        return 0
    try:
        import websocket  # noqa: F401
    except ImportError:
        print("check_slides: websocket-client not installed - overflow check skipped")
        return 0
    decks = args.decks or sorted(BUILT.glob("[0-9][0-9]*.html"))
    if not decks:
        print("check_slides: no built decks; run `python scripts/build_slides.py --no-pdf` first", file=sys.stderr)
        return 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="check_slides_", ignore_cleanup_errors=True) as profile:
        process, ws_url = start_browser(chromium, profile)
        try:
            page = Page(ws_url)
            page.call("Page.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
            )
            for deck in decks:
                problems += check_deck(page, deck, SHOTS)
            page.ws.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    for line in problems:
        print("OVERFLOW", line)
    print(f"screenshots in {SHOTS.relative_to(ROOT)}; {len(problems)} overflowing slide(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
