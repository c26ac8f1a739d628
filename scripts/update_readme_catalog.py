"""Regenerate the README catalog table from the registry (`losslab list --markdown`).

    .venv/bin/python scripts/update_readme_catalog.py
"""
from __future__ import annotations

import pathlib
import sys

START, END = "<!-- catalog:start -->", "<!-- catalog:end -->"


def render() -> str:
    import losslab
    from losslab.cli.catalog import markdown_table

    return markdown_table(losslab.list_losses())


def main() -> int:
    path = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    text = path.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{render()}\n{END}{tail}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
