"""Placeholder: filled by its issue."""

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    pass
