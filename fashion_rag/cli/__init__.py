"""Command line: `python -m fashion_rag {index,convert-unet,batch,evaluate} --help`."""

from __future__ import annotations

import argparse

from . import batch, convert, evaluate, index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashion_rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (index, convert, batch, evaluate):
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
