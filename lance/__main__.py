"""Command line: ``python -m lance COMMAND ...`` (also installed as ``lance``).

Each command is a function ``_cmd_NAME(args) -> int`` registered in :func:`build_parser` with
its own sub-parser; add a command by adding both.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_status_page(args: argparse.Namespace) -> int:
    from .provenance import status_page

    out = status_page(args.executed_dir, args.out)
    print(f"status page: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "status-page",
        help="write the book's 'Status and reproducibility' page from papermill-executed notebooks",
    )
    p.add_argument("executed_dir", type=Path, help="directory of notebooks executed by papermill")
    p.add_argument("out", type=Path, help="MyST markdown file to write (atomically)")
    p.set_defaults(func=_cmd_status_page)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
