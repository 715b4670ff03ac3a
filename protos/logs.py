"""structlog configuration, shared by every Custodes process.

JSON lines when stderr is not a terminal (production, systemd, CI); readable console
rendering on a terminal. Only the entry module (`protos.cli`) calls `configure`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from dataclasses import dataclass
from typing import Literal


class _ImportedOnUse(types.ModuleType):
    """Stands in for a module that a library imports but uses only inside functions: the
    real module is imported on the first attribute looked up (then found in sys.modules)."""

    def __getattr__(self, name: str) -> object:
        return getattr(importlib.import_module(self.__name__), name)


def _import_structlog() -> None:
    """structlog, without importing asyncio (and with it ssl, subprocess, selectors ...).

    structlog imports asyncio at the top of two modules for its async log methods (`ainfo`
    and friends), which none of our processes call; in a long-running daemon those
    modules would stay resident for nothing (about 2 MB). While structlog is imported, a
    stand-in takes asyncio's place in sys.modules and is then removed: structlog keeps the
    stand-in, which imports the real asyncio the first time an async method uses it, and
    every other importer gets the real module as usual.
    """
    if "structlog" in sys.modules or "asyncio" in sys.modules:
        return
    stand_in = _ImportedOnUse("asyncio")
    sys.modules["asyncio"] = stand_in
    try:
        importlib.import_module("structlog")
    finally:
        if sys.modules.get("asyncio") is stand_in:
            del sys.modules["asyncio"]


_import_structlog()
import structlog  # noqa: E402 - after the stand-in above has done its work


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger (for modules that must import structlog through this one)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


LogFormat = Literal["auto", "json", "console"]


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What `configure` set: a level name in lower case and the format it chose."""

    level: str
    fmt: Literal["json", "console"]


_settings: LogSettings | None = None


def settings() -> LogSettings | None:
    """What the last `configure` set (None before any): for a child process to log alike."""
    return _settings


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of each line, not when configured.

    Binding the stream once would keep writing to a stream that was later replaced and
    closed (a test's captured stderr, a daemon's redirected one).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog for the whole process; safe to call more than once."""
    global _settings  # noqa: PLW0603 - the one process-wide configuration, remembered
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    _settings = LogSettings(
        str(logging.getLevelName(numeric)).lower(), "console" if use_console else "json"
    )
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
