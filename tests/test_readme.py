import pathlib

import losslab
from losslab.cli.catalog import markdown_table

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_catalog_table_is_current():
    text = README.read_text()
    start, end = "<!-- catalog:start -->", "<!-- catalog:end -->"
    assert start in text and end in text
    table = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table(losslab.list_losses()), (
        "README catalog table is stale: run `.venv/bin/python scripts/update_readme_catalog.py`"
    )


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_tour_runs():
    """The tour is the first thing a user copies: it must run as printed."""
    text = README.read_text()
    code = text.split("## A 20-line tour", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    try:
        exec(compile(code, "README tour", "exec"), {})
    finally:
        losslab.set_validation(True)


def test_conventions_live_in_the_repository():
    """Docstrings may point to CONTRIBUTING.md; it exists and states the vocabulary."""
    contributing = README.parent / "CONTRIBUTING.md"
    text = contributing.read_text()
    for heading in ("One vocabulary across families", "Reductions", "Return types", "Modules",
                    "Non-finite inputs", "Distributed"):
        assert f"## {heading}" in text
    src = README.parent / "src" / "losslab"
    for path in src.rglob("*.py"):
        body = path.read_text()
        for private in ("CATALOG.md", "DESIGN.md", "FORMULAS.md"):
            assert private not in body, f"{path.name} points to {private}, which is not in the repository"


def test_status_states_the_number_of_registered_objectives():
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"Registered \((\d+) objectives", text)
    assert found and int(found.group(1)) == len(losslab.list_losses())
