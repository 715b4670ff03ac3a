"""`custodes policy ...` (placeholder until the policy commands land)."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `policy` group."""
    groups.add_parser("policy", help="check and explain service agreements")
