"""Placeholder: filled by its issue."""

NODES: list = []
