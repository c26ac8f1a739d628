"""Pages of the losslab site generated at build time.

* ``families/<family>.rst``: one page per family from the registry (a table of its objectives,
  then each objective's docstring, reference, Module(s), peer and the tests that check it);
* ``experiments.md``: each ``losslab run`` experiment with its README section and the figure
  committed in ``docs/figures/``;
* ``benchmarks.md``: BENCHMARKS.md with, after each section, a plot of the ratio columns of
  its tables (parsed here, drawn with matplotlib).

The generated files are written only when their content changes and are not committed
(``.gitignore``): they follow the registry, README.md and BENCHMARKS.md as those change.
"""
from __future__ import annotations

import ast
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent

FAMILY_TITLES = {
    "calibration": "Calibration",
    "classification": "Classification",
    "contrastive": "Contrastive and self-supervised",
    "distillation": "Distillation",
    "divergences": "Divergences",
    "estimators": "Estimators",
    "information": "Information and diversity",
    "large_vocab": "Large vocabulary",
    "metric": "Metric learning",
    "preference": "Preference alignment and RL fine-tuning",
    "ranking": "Ranking and AUC",
    "regression": "Regression and uncertainty",
    "transport": "Optimal transport and kernels",
}
CONFORMANCE = ("tests/test_conformance.py", "tests/test_conformance_properties.py")
MAX_TESTS_PER_FILE = 15


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (so Sphinx does not re-read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _rst_text(text: str) -> str:
    """Plain text safe inside reStructuredText (no markup characters)."""
    return re.sub(r"([\\`*_|<>])", r"\\\1", text)


# ---------------------------------------------------------------------------------------------
# which tests exercise which objective


def _losslab_aliases(tree: ast.Module) -> set[str]:
    """Names a test module binds to losslab or its modules (``import losslab.functional as F``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("losslab")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("losslab"):
            found |= {a.asname or a.name for a in node.names}
    return found


def _names_in(node: ast.AST, aliases: set[str]) -> set[str]:
    """Bare names, attributes reached from losslab (``F.kd_loss``, not ``out.entropy``) and
    string constants (parametrized names) used in ``node``."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            root = sub.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.add(sub.attr)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found.add(sub.value)
    return found


def _names_in_test_name(test: str, names: set[str]) -> set[str]:
    """Registered names spelled in a test's name, as whole ``_``-separated words; a name inside a
    longer one found at the same place (``entropy`` in ``test_cross_entropy_...``) does not count."""
    spans = []
    for name in names:
        for m in re.finditer(rf"(?:^|_){re.escape(name)}(?=_|$)", test):
            start = m.start() + (m.group().startswith("_") and not name.startswith("_"))
            spans.append((start, start + len(name), name))
    return {n for a, b, n in spans if not any(a2 <= a and b <= b2 and (a2, b2) != (a, b) for a2, b2, _ in spans)}


def tests_by_name(names: set[str]) -> dict[str, dict[str, list[str]]]:
    """``{name: {test file: [test functions]}}``: the test functions of ``tests/`` that call,
    name or parametrize over each registered name (or its Module class), outside the
    registry-driven conformance suite."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in CONFORMANCE or rel == "tests/test_docs.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = _losslab_aliases(tree)
        nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            nodes += [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in nodes:
            if not fn.name.startswith("test"):
                continue
            used = _names_in(fn, aliases)
            for name in (names & used) | _names_in_test_name(fn.name, names):
                out[name][rel].append(fn.name)
    return out


# ---------------------------------------------------------------------------------------------
# family pages


def _public_path(obj, *modules) -> str:
    for mod in modules:
        if getattr(mod, obj.__name__, None) is obj:
            return f"{mod.__name__}.{obj.__name__}"
    return f"{obj.__module__}.{obj.__qualname__}"


def _properties(props: dict) -> str:
    parts = []
    for key, value in sorted(props.items()):
        if value is True:
            parts.append(f"``{key}``")
        elif value is False:
            parts.append(f"not ``{key}``")
        elif value is not None:
            parts.append(f"``{key}={value}``")
    return ", ".join(parts) or "—"


def family_page(family: str, tests: dict) -> str:
    import losslab
    import losslab.estimators as E
    import losslab.functional as F
    import losslab.nn as N

    names = losslab.list_losses(family=family)
    title = FAMILY_TITLES.get(family, family.replace("_", " ").capitalize())
    lines = [f".. _family-{family}:", "", _heading(title, "="), ""]
    lines += [
        f"The {len(names)} objectives registered in the ``{family}`` family "
        f"(``losslab.list_losses(family=\"{family}\")``). Every one of them also passes the "
        "conformance suite (``tests/test_conformance.py``, ``tests/test_conformance_properties.py``): "
        "the reduction contract, bad-input messages, float64 gradcheck, half precision, inputs of "
        "magnitude 1e4, NaN propagation, its Module and ``torch.compile``, driven by its registered "
        "example.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 34 30 18",
        "",
        "   * - objective",
        "     - summary",
        "     - paper",
        "     - properties",
    ]
    for name in names:
        info = losslab.info(name)
        ref = info.reference
        lines += [
            f"   * - :ref:`{name} <obj-{name}>`",
            f"     - {info.summary}",  # reStructuredText, as in the docstring
            f"     - `{_rst_text(ref.title)} <{ref.url}>`__ ({ref.year})",
            f"     - {_properties(info.properties)}",
        ]
    lines.append("")
    for name in names:
        info = losslab.info(name)
        fn = info.function
        target = _public_path(fn, F, E)
        lines += [f".. _obj-{name}:", "", _heading(name, "-"), ""]
        directive = "autoclass" if isinstance(fn, type) else "autofunction"
        lines += [f".. {directive}:: {target}"]
        if isinstance(fn, type):
            lines += ["   :members:", "   :undoc-members:"]
        lines += ["", f"**Reference.** {_rst_text(str(info.reference))}", ""]
        if info.seed and info.seed != info.reference.title:
            lines += [f"**Seed paper.** {_rst_text(info.seed)}", ""]
        if info.tags:
            lines += ["**Tags.** " + ", ".join(_rst_text(t) for t in info.tags), ""]
        if info.modules:
            lines += ["**Module.**", ""]
            for cls in info.modules:
                lines += [f".. autoclass:: {_public_path(cls, N, E)}", "   :members:", ""]
        else:
            lines += ["**Module.** none: call the function.", ""]
        peer = info.peer
        if peer is not None:
            lines += [f"**Peer.** ``{peer.label}`` (package ``{peer.package}``); "
                      f"``losslab bench {name}`` times both on the same inputs.", ""]
        else:
            lines += ["**Peer.** none registered.", ""]
        lines += ["**How it was checked.** The conformance suite (above), and these tests:", ""]
        found = tests.get(name, {})
        for cls in info.modules:
            for file, fns in tests.get(cls.__name__, {}).items():
                found.setdefault(file, [])
                found[file] = found[file] + [f for f in fns if f not in found[file]]
        if not found:
            lines += ["- no test outside the conformance suite names it.", ""]
        for file, fns in sorted(found.items()):
            shown = ", ".join(f"``{f}``" for f in fns[:MAX_TESTS_PER_FILE])
            more = f" and {len(fns) - MAX_TESTS_PER_FILE} more" if len(fns) > MAX_TESTS_PER_FILE else ""
            lines.append(f"- ``{file}``: {shown}{more}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_families() -> None:
    import losslab

    names = set(losslab.list_losses())
    for name in list(names):
        names.update(cls.__name__ for cls in losslab.info(name).modules)
    tests = tests_by_name(names)
    fams = losslab.families()
    index = [_heading("Objectives by family", "="), "",
             "One page per family, generated from the registry when the site is built.", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {f}" for f in fams]
    _write(DOCS / "families" / "index.rst", "\n".join(index) + "\n")
    for fam in fams:
        _write(DOCS / "families" / f"{fam}.rst", family_page(fam, tests))
    for stale in (DOCS / "families").glob("*.rst"):
        if stale.stem != "index" and stale.stem not in fams:
            stale.unlink()


# ---------------------------------------------------------------------------------------------
# experiments


def readme_sections() -> list[tuple[str, str]]:
    """The README's ``## `` sections as (heading, body)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def write_experiments() -> None:
    from losslab.experiments import discover

    figures = json.loads((DOCS / "figures" / "figures.json").read_text(encoding="utf-8"))
    sections = readme_sections()
    out = ["# Experiments", "",
           "Each experiment is one command, `losslab run NAME` (`losslab run NAME --help` lists its flags; "
           "results go to `runs/NAME` unless `--out` says otherwise). The tables are the README's, from the "
           "full runs; each figure was made by the command in its caption.", ""]
    shown: dict[str, str] = {}
    for name, mod in discover().items():
        out += [f"## `losslab run {name}`", "", mod.HELP[:1].upper() + mod.HELP[1:] + ".", "",
                "```bash", f"losslab run {name}", "```", ""]
        section = next(((h, b) for h, b in sections if f"losslab run {name}`" in h), None)
        if section is not None and section[0] in shown:
            out += [f"Its table is in the README section shown under `losslab run {shown[section[0]]}` above.", ""]
        elif section is not None:
            shown[section[0]] = name
            heading, body = section
            heading = re.sub(r"\s*\(`losslab run.*$", "", heading)
            out += [f"From the README, *{heading}*:", "", body.strip(), ""]
        else:
            mention = re.search(rf"`{re.escape(name)}`\s*\(([^)]*(?:\([^)]*\)[^)]*)*)\)",
                                dict(sections).get("Status", ""))
            if mention:
                out += [f"From the README: {' '.join(mention.group(1).split())}.", ""]
            printed = DOCS / "figures" / f"{name}.txt"
            if printed.exists():
                out += [f"The table printed by `{figures.get(name, {}).get('command', 'losslab run ' + name)}` "
                        "(the run that made the figure below):", "", "```text",
                        printed.read_text(encoding="utf-8").rstrip(), "```", ""]
        fig = figures.get(name)
        if fig:
            out += [f"```{{figure}} figures/{fig['file']}", ":width: 90%", "",
                    f"Made by `{fig['command']}` ({fig['note']})." if fig.get("note") else
                    f"Made by `{fig['command']}`.", "```", ""]
        else:
            out += ["No figure committed for this experiment yet.", ""]
    _write(DOCS / "experiments.md", "\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------
# benchmarks


def _is_ratio(header: str) -> bool:
    h = header.lower()
    return "ratio" in h or "/" in h or h.startswith("x_") or "speed-up" in h


def parse_table(block: str) -> list[dict]:
    """Tables of a fixed-width code block: a header line, then rows aligned under it.

    A line starting with ``#`` (a caption) or a blank line starts a new table; lines whose
    cells do not line up with the header (summaries) are skipped."""
    tables: list[dict] = []
    header = None
    for line in block.splitlines() + [""]:
        if not line.strip() or line.startswith("#"):
            header = None
            continue
        if header is None:
            starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", line)]
            if len(starts) < 2:
                continue
            names = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
            header = {"columns": names, "starts": starts, "rows": []}
            tables.append(header)
            continue
        starts = header["starts"]
        cells = [line[a:b].strip() if a < len(line) else "" for a, b in zip(starts, starts[1:] + [None])]
        # a row whose characters straddle a column start is not part of the table (a summary line)
        if any(0 < a < len(line) and line[a - 1] != " " for a in starts[1:]):
            continue
        header["rows"].append(cells)
    return [t for t in tables if t["rows"]]


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def benchmark_sections() -> list[tuple[str, str, list[dict]]]:
    """(heading, markdown body, tables) for every ``## `` section of BENCHMARKS.md."""
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    out = []
    for i in range(1, len(parts), 2):
        body = parts[i + 1]
        tables = []
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", body, flags=re.M | re.S):
            tables += parse_table(block)
        out.append((parts[i].strip(), body, tables))
    return out


def plot_ratios(heading: str, tables: list[dict], path: Path) -> bool:
    """One horizontal bar chart per ratio column (log scale, a line at 1); False if none."""
    panels = []
    for t in tables:
        cols = t["columns"]
        label_cols = [j for j, c in enumerate(cols)
                      if not _is_ratio(c) and not any(_number(r[j]) is not None for r in t["rows"] if j < len(r))]
        fill = [""] * len(cols)
        for j, c in enumerate(cols):
            if not _is_ratio(c):
                continue
            labels, values = [], []
            for row in t["rows"]:
                row = row + [""] * (len(cols) - len(row))
                for k in label_cols:  # rows that leave a label blank continue the row above
                    fill[k] = row[k] or fill[k]
                v = _number(row[j])
                if v is None or v <= 0:
                    continue
                key = [fill[k] for k in label_cols] + [f"{cols[k]}={row[k]}" for k in range(len(cols))
                                                       if k not in label_cols and not _is_ratio(cols[k])
                                                       and _number(row[k]) is not None and len(cols[k]) <= 2]
                labels.append(" ".join(x for x in key if x))
                values.append(v)
            if values:
                panels.append((c, labels, values))
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1.6, 0.22 * len(p[1]) + 0.9) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (col, labels, values) in zip(axes[:, 0], panels):
        y = range(len(values))
        ax.barh(list(y), values, color=["tab:blue" if v <= 1 else "tab:orange" for v in values])
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel(col + " (log scale; 1 = equal)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


def _plot_cached(heading: str, tables: list[dict], png: Path) -> bool:
    """:func:`plot_ratios`, redrawn only when the section's tables (or this file) changed."""
    import hashlib

    key = hashlib.sha256(json.dumps([heading, tables]).encode() + Path(__file__).read_bytes()).hexdigest()
    stamp = png.with_suffix(".key")
    if stamp.exists() and stamp.read_text() == key:
        return png.exists()
    drawn = plot_ratios(heading, tables, png)
    if not drawn and png.exists():
        png.unlink()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return drawn


def write_benchmarks() -> None:
    out = ["# Benchmarks", "",
           "The tables below are BENCHMARKS.md's, read when the site is built; after each section, a plot of "
           "every ratio column of its tables (log scale; blue at or below 1, orange above; what a ratio "
           "divides is its column's name, e.g. losslab / peer or peer / losslab).", ""]
    src = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    intro = re.split(r"^## ", src, flags=re.M)[0]
    intro = re.sub(r"^# .*\n", "", intro).strip()
    out += [intro, ""]
    plots = DOCS / "benchmark_plots"
    for k, (heading, body, tables) in enumerate(benchmark_sections()):
        out += [f"## {heading}", "", body.strip(), ""]
        png = plots / f"section{k:02d}.png"
        if _plot_cached(heading, tables, png):
            out += [f"```{{figure}} benchmark_plots/{png.name}", ":width: 95%", "",
                    f"The ratio columns of the tables above ({heading}).", "```", ""]
    _write(DOCS / "benchmarks.md", "\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------


def generate(app) -> None:
    write_families()
    write_experiments()
    write_benchmarks()


def public_bases(app, name, obj, options, bases: list) -> None:
    """Show a private base class (``_StatefulContrastive``) as its own public bases."""
    i = 0
    while i < len(bases):
        if getattr(bases[i], "__name__", "").startswith("_"):
            bases[i:i + 1] = list(bases[i].__bases__)
        else:
            i += 1


def skip_torch_members(app, what, name, obj, skip, options):
    """Leave out methods losslab does not document itself (e.g. ``set_extra_state``, whose
    docstring would be torch's)."""
    if what == "class" and callable(obj) and getattr(obj, "__doc__", None) is None:
        return True
    if what == "class" and callable(obj) and getattr(obj, "__module__", "").startswith("torch"):
        return True
    return None


class DocstringFileLines(logging.Filter):
    """Give a docstring warning the file line it comes from.

    Sphinx locates a warning in a docstring as ``file.py:docstring of NAME:N`` (line N of the
    docstring). This adds ``file.py:LINE``, the line in the source file, so an editor jumps to
    it: exact in the text before the ``Args:`` section, within a line or two after it (napoleon
    rewrites the sections)."""

    pattern = re.compile(r"^(?P<path>.+\.py):docstring of (?P<obj>[\w.]+):(?P<line>\d+)$")

    def filter(self, record: logging.LogRecord) -> bool:
        loc = getattr(record, "location", None)
        m = self.pattern.match(loc) if isinstance(loc, str) else None
        if m:
            start = _docstring_start(m["path"], m["obj"])
            if start is not None:
                line = start + int(m["line"]) - 1
                record.location = f"{m['path']}:{line}: docstring of {m['obj']}, line {m['line']}"
        return True


_TREES: dict[str, dict[str, int]] = {}


def _docstring_start(path: str, obj: str) -> int | None:
    """The first line of ``obj``'s docstring in ``path`` (matched by qualified-name suffix)."""
    if path not in _TREES:
        starts: dict[str, int] = {}
        try:
            tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            tree = ast.Module(body=[], type_ignores=[])

        def walk(body, prefix):
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = prefix + node.name
                    doc = node.body[0] if node.body else None
                    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) \
                            and isinstance(doc.value.value, str):
                        starts[name] = doc.lineno
                    if isinstance(node, ast.ClassDef):
                        walk(node.body, name + ".")

        walk(tree.body, "")
        _TREES[path] = starts
    parts = obj.split(".")
    for i in range(len(parts)):
        found = _TREES[path].get(".".join(parts[i:]))
        if found is not None:
            return found
    return None


def setup(app):
    for handler in logging.getLogger("sphinx").handlers:  # after Sphinx's own location filters
        handler.addFilter(DocstringFileLines())
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("autodoc-skip-member", skip_torch_members)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
