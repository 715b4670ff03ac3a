"""`custodes server user passwd NAME`: set a person's console password (argon2id).

Asked twice on a terminal; `--stdin` reads one line instead (for scripts and the demo).
Setting a password ends every console session of that person.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from protos.errors import UsageError
from server.console.auth import MAX_PASSWORD, hash_password
from server.datadir import DEFAULT_DATA
from server.store import Store
from server.store.access import AccessStore
from server.store.console import ConsoleStore

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
OpenStore: TypeAlias = Callable[[argparse.Namespace], Store]


def add_passwd(user_commands: Subparsers, open_store_for: OpenStore) -> None:
    """Add `passwd` to the `server user` commands."""
    passwd = user_commands.add_parser("passwd", help="set a person's console password")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument(
        "--stdin", action="store_true", help="read the password from standard input (one line)"
    )
    passwd.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default {DEFAULT_DATA})"
    )
    passwd.add_argument("--database", default=None, help="database URL (default: from DIR)")
    passwd.set_defaults(func=lambda a: _passwd(a, open_store_for))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")
    first = getpass.getpass("new console password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ; expected the same one twice")
    return first


def set_password(store: Store, name: str, password: str) -> int:
    """Hash and store `name`'s password, ending their sessions; how many sessions ended.

    UsageError when no such person exists; WeakPasswordError when the password is too short.
    """
    if AccessStore(store).get_person(name) is None:
        raise UsageError(
            f"{name!r} is not a person of this server; expected one added with "
            "`custodes server user add`",
            hint="`custodes server user list` shows who exists",
        )
    hashed = hash_password(password)
    console = ConsoleStore(store)
    console.set_password(name, hashed, int(time.time()))
    return console.end_sessions_of(name)


def _passwd(args: argparse.Namespace, open_store_for: OpenStore) -> int:
    password = _read_password(args.stdin)
    store = open_store_for(args)
    try:
        ended = set_password(store, args.name, password)
    finally:
        store.close()
    ended_text = f"; {ended} session(s) ended" if ended else ""
    print(f"console password of {args.name!r} set{ended_text}")
    return 0
