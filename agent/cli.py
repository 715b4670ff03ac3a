"""`custodes agent ...` (the daemon and its journal tools)."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` group."""
    groups.add_parser("agent", help="run the agent daemon and inspect its journal")
