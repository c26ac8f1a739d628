"""Entry point of the ``losslab`` command.

    losslab list [PATTERN] [--family F] [--markdown]
    losslab info NAME
    losslab run EXPERIMENT [options]      (losslab run --help lists them)
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line with status 2 (its default status)."""

    def error(self, message: str) -> None:  # pragma: no cover - argparse path
        self.exit(2, f"losslab: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    from losslab.experiments import discover

    parser = _Parser(prog="losslab", description="Training objectives from recent research.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_list = sub.add_parser("list", help="list registered objectives")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. '*kl*'")
    p_list.add_argument("--family", default=None)
    p_list.add_argument("--markdown", action="store_true", help="print the README catalog table")

    p_info = sub.add_parser("info", help="formula, reference and properties of one objective")
    p_info.add_argument("name")

    p_run = sub.add_parser("run", help="run an experiment")
    runs = p_run.add_subparsers(dest="experiment", required=True, parser_class=_Parser, metavar="EXPERIMENT")
    for name, mod in discover().items():
        p = runs.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_experiment=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    import losslab
    from losslab.cli import catalog
    from losslab.experiments import ExperimentError

    try:
        if args.command == "list":
            names = losslab.list_losses(args.pattern, family=args.family)
            print(catalog.markdown_table(names) if args.markdown else catalog.plain_table(names))
            return 0
        if args.command == "info":
            print(catalog.describe(args.name))
            return 0
        if args.command == "run":
            return int(args._experiment.run(args) or 0)
    except KeyError as exc:
        print(f"losslab: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except ExperimentError as exc:
        print(f"losslab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("losslab: interrupted; finished results are kept", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
