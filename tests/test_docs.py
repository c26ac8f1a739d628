"""The documentation site (``make docs``): every registered objective is on its family page,
every page is reachable from the index, and the build has no warnings.

Under ``make test`` the site is built by the step before pytest, which passes its location in
``LOSSLAB_DOCS_HTML``; run alone, this module builds the site into a temporary folder itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

import losslab

ROOT = Path(__file__).resolve().parents[1]
# pages Sphinx adds on its own, not part of the site's content
GENERATED = {"genindex.html", "search.html", "py-modindex.html"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """(html folder, warnings text) of a built site."""
    built = os.environ.get("LOSSLAB_DOCS_HTML")
    if built:
        html = Path(built)
        if not html.is_absolute():
            html = ROOT / html
        warnings = html.parent / "warnings.txt"
        assert (html / "index.html").is_file(), f"LOSSLAB_DOCS_HTML={built} holds no built site"
        assert warnings.is_file(), f"no warnings file next to {html} (the docs step writes it with -w)"
        return html, warnings.read_text(encoding="utf-8")
    try:
        import sphinx  # noqa: F401
    except ImportError:
        pytest.fail("Sphinx is not installed: `make install-dev` (or pip install -e '.[docs]') installs it")
    out = tmp_path_factory.mktemp("docs")
    warnings = out / "warnings.txt"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-n", "-E", "-q", "-w", str(warnings),
           "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "html", warnings.read_text(encoding="utf-8")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if a.get("id"):
            self.ids.add(a["id"])


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_build_has_no_warnings(site):
    _, warnings = site
    assert warnings.strip() == "", warnings


def test_every_objective_is_on_its_family_page(site):
    html, _ = site
    families = losslab.families()
    assert families, "the registry lists no family"
    ids = {fam: _parse(html / "families" / f"{fam}.html").ids for fam in families}
    missing = []
    for name in losslab.list_losses():
        info = losslab.info(name)
        page = ids[info.family]
        documented = {f"losslab.functional.{name}", f"losslab.estimators.{name}"} & page
        section = "obj-" + re.sub(r"[^a-z0-9]+", "-", name.lower())  # docutils' id of the label obj-<name>
        if section not in page or not documented:
            missing.append(f"{name} ({info.family})")
        for cls in info.modules:
            if f"losslab.nn.{cls.__name__}" not in page and f"losslab.estimators.{cls.__name__}" not in page:
                missing.append(f"{name}'s Module {cls.__name__} ({info.family})")
    assert not missing, f"not documented on their family page: {missing}"


def test_every_page_is_reachable_from_the_index(site):
    html, _ = site
    seen: set[Path] = set()
    todo = [html / "index.html"]
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        for href in _parse(page).hrefs:
            target, _ = urldefrag(href)
            if not target or re.match(r"^[a-z]+:", target):
                continue
            path = (page.parent / unquote(target)).resolve()
            if path.suffix == ".html" and path.is_relative_to(html.resolve()):
                todo.append(path)
    pages = {p.resolve() for p in html.rglob("*.html")
             if not any(part.startswith("_") for part in p.relative_to(html).parts) and p.name not in GENERATED}
    unreachable = sorted(str(p.relative_to(html.resolve())) for p in pages - seen)
    assert not unreachable, f"pages no link from index.html leads to: {unreachable}"
    # the hand-written pages and one page per family are among them
    names = {str(p.relative_to(html.resolve())) for p in seen}
    expected = {"getting_started.html", "conventions.html", "choosing.html", "experiments.html",
                "benchmarks.html", "changelog.html", "api.html"}
    expected |= {f"families/{f}.html" for f in losslab.families()}
    assert expected <= names, sorted(expected - names)


def test_formulas_are_served_from_the_site(site):
    """MathJax is a local file of the site (no CDN), and the family pages carry the formulas."""
    html, _ = site
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    page = (html / "families" / "classification.html").read_text(encoding="utf-8")
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert any(s.split("?")[0].endswith("_static/mathjax/tex-chtml.js") for s in scripts), scripts
    assert not [s for s in scripts if re.match(r"^(https?:)?//", s)], scripts
    assert 'class="math' in page


def test_a_docstring_warning_names_the_source_file_and_line(tmp_path):
    """`make docs` fails on a bad docstring with the file and line an editor can jump to."""
    import importlib.util
    import logging

    spec = importlib.util.spec_from_file_location("losslab_docs_ext", ROOT / "docs" / "_ext" / "losslab_docs.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    src = tmp_path / "mod.py"
    src.write_text('import torch\n\n\nclass Loss:\n    def forward(self):\n        """Summary.\n\n'
                   '        A ``broken literal.\n        """\n')
    record = logging.LogRecord("sphinx", logging.WARNING, "", 0, "Inline literal start-string without end-string.",
                               None, None)
    record.location = f"{src}:docstring of pkg.mod.Loss.forward:3"
    assert ext.DocstringFileLines().filter(record)
    assert record.location == f"{src}:8: docstring of pkg.mod.Loss.forward, line 3"
