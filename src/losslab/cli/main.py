"""Entry point of the ``losslab`` command.

    losslab list [PATTERN] [--family F] [--markdown]
    losslab info NAME
    losslab bench NAME [--size small|medium|large] [--dtype float32|bfloat16] [--shape AxB] [--json]
    losslab run EXPERIMENT [options]      (losslab run --help lists them)

Bad input (unknown objective, family, experiment option) is reported on one line,
``losslab: error: ...``, with exit status 2 and no traceback; Ctrl-C exits with 130.
:func:`main` returns the exit status (it does not call ``sys.exit``), so it can be called
in-process: ``main(["list", "*kl*"])``.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line with status 2 (its default status)."""

    def error(self, message: str) -> None:  # pragma: no cover - argparse path
        self.exit(2, f"losslab: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    from losslab.experiments import discover

    parser = _Parser(prog="losslab", description="Training objectives from recent research.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_list = sub.add_parser("list", help="list registered objectives")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern matched against names, summaries, paper titles and tags, "
                        "e.g. '*kl*', '*noisy*', '*long*tail*'")
    p_list.add_argument("--family", default=None, help="only this family, e.g. classification")
    p_list.add_argument("--markdown", action="store_true", help="print the README catalog table")

    p_info = sub.add_parser("info", help="formula, reference and properties of one objective")
    p_info.add_argument("name")

    p_bench = sub.add_parser("bench", help="time an objective against its peer (torch, pytorch-metric-learning, "
                             "geomloss, POT, torchmetrics)")
    from losslab.cli import bench

    bench.add_arguments(p_bench)

    p_run = sub.add_parser("run", help="run an experiment")
    runs = p_run.add_subparsers(dest="experiment", required=True, parser_class=_Parser, metavar="EXPERIMENT")
    for name, mod in discover().items():
        p = runs.add_parser(name, help=mod.HELP.replace("%", "%%"), description=mod.HELP)  # help is %-formatted
        mod.add_arguments(p)
        p.set_defaults(_experiment=mod)
    return parser


class _UsageError(Exception):
    """Bad command-line input found after parsing (one-line error, status 2)."""


def _check_name(name: str) -> None:
    import losslab

    if name not in losslab.list_losses():
        close = losslab.registry.suggest(name)  # the same suggestions as losslab.info()
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; see `losslab list`"
        raise _UsageError(f"no objective named {name!r}{hint}")


def _check_family(family: str | None) -> None:
    import losslab

    if family is None:
        return
    families = sorted({losslab.info(n).family for n in losslab.list_losses()})
    if family not in families:
        raise _UsageError(f"unknown family {family!r}; choose one of {', '.join(families)}")


def _dispatch(args) -> int:
    import losslab
    from losslab.cli import catalog

    if args.command == "list":
        _check_family(args.family)
        names = losslab.list_losses(args.pattern, family=args.family)
        print(catalog.markdown_table(names) if args.markdown else catalog.plain_table(names))
        return 0
    if args.command == "info":
        _check_name(args.name)
        print(catalog.describe(args.name))
        return 0
    if args.command == "bench":
        from losslab.benchmarking import BenchError
        from losslab.cli import bench

        _check_name(args.name)
        problem = bench.check(args)
        if problem:
            raise _UsageError(problem)
        try:
            return bench.run(args)
        except BenchError as exc:
            raise _UsageError(str(exc)) from None
    if args.command == "run":
        return int(args._experiment.run(args) or 0)
    raise _UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``losslab`` command; returns the exit status."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error already printed (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from losslab.experiments import ExperimentError

    try:
        return _dispatch(args)
    except (_UsageError, ExperimentError) as exc:
        print(f"losslab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("losslab: interrupted; finished results are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `losslab list | head`: stop quietly, as other commands do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
            pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
