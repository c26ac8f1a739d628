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
