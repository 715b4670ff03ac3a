"""`custodes server ...`, `custodes events`, `custodes evidence ...`."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the groups that act on a server's data directory."""
    groups.add_parser("server", help="initialise and run the MSP's central service")
