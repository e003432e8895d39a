"""Command line: `python -m fashion_rag {index,convert-unet,demo,...} --help`."""

from __future__ import annotations

import argparse
import sys

from . import convert_cli, demo_cli, index_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashion_rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (index_cli, convert_cli, demo_cli):
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
