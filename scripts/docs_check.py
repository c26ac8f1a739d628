"""Look at the built documentation site as a reader would (``make docs-check``).

Opens the index and a family page (then every other page) in headless Chromium (Debian's ``/usr/bin/chromium``,
driven by the ``playwright`` package; no browser is downloaded and no network is used), waits
for MathJax, and fails if a formula is left as raw TeX, a page has no rendered formula where
it has math, or a page logs a console error. Full-page screenshots go to
``<site>/_screenshots/``.

Usage: ``python scripts/docs_check.py docs/_build/html [--chromium /usr/bin/chromium]``
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PAGES = [("index.html", False), ("families/classification.html", True)]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
RAW_TEX = ["\\frac", "\\sum", "\\log", "\\mathrm", "$$", "\\(", "\\["]


def check_page(browser, site: Path, rel: str, needs_math: bool, shots: Path) -> list[str]:
    problems: list[str] = []
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.goto((site / rel).resolve().as_uri())
    page.wait_for_load_state("load")
    has_math = page.locator(".math").count() > 0
    if needs_math or has_math:
        # MathJax 3 resolves this promise once every formula on the page is typeset
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("() => MathJax.startup.promise")
    rendered = page.locator("mjx-container").count()
    text = page.inner_text("body")
    raw = [t for t in RAW_TEX if t in text]
    if raw:
        problems.append(f"{rel}: raw TeX left in the rendered text: {raw}")
    if (needs_math or has_math) and rendered == 0:
        problems.append(f"{rel}: no rendered formula (no mjx-container element)")
    for e in errors:
        problems.append(f"{rel}: console error: {e}")
    shot = shots / (rel.replace("/", "_").replace(".html", ".png"))
    page.screenshot(path=str(shot), full_page=False)
    print(f"{rel}: {rendered} rendered formulas, {len(errors)} console errors -> {shot}")
    if needs_math:
        # a second screenshot scrolled to the first objective's formula
        first = page.locator("div.math mjx-container").first
        if first.count():
            first.scroll_into_view_if_needed()
            page.evaluate("() => window.scrollBy(0, -250)")
            formula = shots / (rel.replace("/", "_").replace(".html", "_formula.png"))
            page.screenshot(path=str(formula))
            print(f"{rel}: formula screenshot -> {formula}")
    page.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--pages", nargs="*", help="the other pages to check, relative to the site (default: every page)")
    args = ap.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"no built site at {args.site} (run `make docs`)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    shots = args.site / "_screenshots"
    shots.mkdir(exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="losslab-docs-check-"))
    problems: list[str] = []
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=args.chromium, headless=True, args=FLAGS,
                ignore_default_args=["--enable-automation"], offline=True, viewport={"width": 1280, "height": 900})
            try:
                extra = args.pages if args.pages is not None else sorted(
                    p.relative_to(args.site).as_posix() for p in args.site.rglob("*.html")
                    if not p.relative_to(args.site).as_posix().startswith("_")
                    and p.name not in ("genindex.html", "search.html", "py-modindex.html"))
                extra = [p for p in extra if p not in dict(PAGES)]
                for rel, needs_math in PAGES + [(p, False) for p in extra]:
                    problems += check_page(context, args.site, rel, needs_math, shots)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    print("docs-check:", "failed" if problems else "passed", f"(screenshots in {shots})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
