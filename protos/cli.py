"""The `custodes` executable: parse arguments, configure logging, run, exit with a code.

Subcommand groups live with their packages and are found through the
`custodes.commands` entry-point group, so this module imports neither `agent` nor
`server` (docs/adr/0001-cli-entry-point.md). Each group exposes
`register(subparsers) -> None`; each command sets `func(args) -> int` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

# protos.logs imports structlog (its way: see there) before anything else does.
from protos import logs
from protos.errors import CustodesError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
GROUP = "custodes.commands"
_MAX_ENTRY_POINTS_BYTES = 64 * 1024

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


_GLOBAL_OPTIONS_WITH_VALUE = ("--log-level", "--log-format")


def _requested_group(argv: Sequence[str] | None) -> str | None:
    """The group named on the command line, or None (help, or nothing named yet)."""
    args = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            if arg in ("-h", "--help"):
                return None
            i += 1
            continue
        return arg
    return None


class EntryPoint(NamedTuple):
    """One `custodes.commands` entry point: `value` is "module:attribute"."""

    name: str
    value: str
    group: str = GROUP

    def load(self) -> Register:
        """Import the module and return the attribute (ImportError, AttributeError)."""
        module, _, attr = self.value.partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else ():
            obj = getattr(obj, part)
        return obj  # type: ignore[return-value]


def _dist_key(dirname: str) -> str:
    # "custodes-0.1.0.dist-info" -> "custodes", normalised as importlib.metadata does.
    return re.sub(r"[-_.]+", "_", dirname.rsplit(".", 1)[0].split("-", 1)[0]).lower()


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of `group` declared by the distributions on sys.path.

    What `importlib.metadata.entry_points(group=...)` returns for installed (not zipped)
    distributions, the first of a name on sys.path winning; read here without importing
    importlib.metadata, which brings email, zipfile, csv, lzma and bz2 (about 1.2 MB) into
    every process, the agent daemon included, for its whole life.
    """
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for base in sys.path:
        try:
            dists = sorted(Path(base or ".").iterdir())
        except OSError:
            continue
        for dist in dists:
            if not dist.name.endswith((".dist-info", ".egg-info")):
                continue
            key = _dist_key(dist.name)
            if key in seen:
                continue
            seen.add(key)
            try:
                with (dist / "entry_points.txt").open("rb") as f:
                    text = f.read(_MAX_ENTRY_POINTS_BYTES).decode("utf-8", "replace")
            except OSError:
                continue
            found += _parse_entry_points(text, group)
    return found


def _parse_entry_points(text: str, group: str) -> list[EntryPoint]:
    section = ""
    out: list[EntryPoint] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, value = line.split("=", 1)
            out.append(EntryPoint(name.strip(), value.strip(), group))
    return out


def _load_order(ep: EntryPoint) -> tuple[int, str]:
    # The agent's group first: on a client's server it is the one that must always load.
    return (0 if ep.name == "agent" else 1, ep.name)


def build_parser(
    broken: list[str] | None = None, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The full argument parser with every installed subcommand group.

    A group whose module fails to import is left out and described in `broken`, so that one
    package's trouble (a server dependency missing on a client's machine, say) never stops
    another package's commands, such as the agent's, from running.
    """
    parser = argparse.ArgumentParser(
        prog="custodes",
        description="Enforce and prove technicians' access to clients' sensitive data.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="json in production; console on a terminal (auto picks)",
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP")
    groups.required = True
    wanted = _requested_group(argv)
    for ep in sorted(entry_points(group=GROUP), key=_load_order):
        if wanted is not None and wanted in groups.choices:
            break  # only what the command needs: `agent run` never imports the server
        try:
            register: Register = ep.load()
        except Exception as exc:  # isolate each group: report it only if it is the one asked for
            if broken is not None:
                broken.append(f"{ep.value}: {type(exc).__name__}: {exc}")
            continue
        register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; never lets a traceback reach the user."""
    broken: list[str] = []
    parser = build_parser(broken, argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if broken and exc.code not in (0, None):
            for problem in broken:
                print(f"custodes: a command group could not be loaded: {problem}", file=sys.stderr)
            print("hint: reinstall with `make venv`; the message names the module", file=sys.stderr)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    logs.configure(args.log_level, args.log_format)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except CustodesError as exc:
        print(f"custodes: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the last line of defence: log it, print one line, exit 1
        logs.get_logger().exception("command_crashed", command=args.group)
        print(f"custodes: internal error: {exc!r}", file=sys.stderr)
        print("hint: this is a bug; the log above has the details", file=sys.stderr)
        return EXIT_FAILED


def run() -> None:
    """Console-script shim that exits with `main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
