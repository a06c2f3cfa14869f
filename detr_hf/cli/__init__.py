"""The ``detr-hf`` command line.

    detr-hf convert path/to/export --format voc --output data/mine [--val-fraction 0.1] [--push-to-hub me/mine]
    detr-hf inspect data/mine

    detr-hf evaluate --model runs/mine --data data/mine
    detr-hf predict --model runs/mine photo.jpg --output predictions/

Each subcommand is a function that adds its parser (with ``set_defaults(run=...)``) to the subparsers; to add one,
write such a function and append it to ``SUBCOMMANDS`` (``convert`` and ``inspect`` live in ``cli/data.py``,
``evaluate`` and ``predict`` in ``cli/model.py``). A ``run`` function returns the exit status;
:class:`~detr_hf.data.report.DatasetValidationError` becomes a one-line error and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..data.report import DatasetValidationError
from .check import add_check
from .data import add_convert, add_inspect
from .export import add_export
from .model import add_evaluate, add_predict

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_convert,
    add_inspect,
    add_evaluate,
    add_predict,
    add_check,
    add_export,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``detr-hf`` parser, with a subparser for each entry of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="detr-hf", description="Fine-tune DETR-family detectors on your own data.")
    parser.add_argument("--version", action="version", version=f"detr-hf {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``detr-hf`` with `argv` (default: the command line); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DatasetValidationError as e:
        print(f"detr-hf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
