"""agent.toml: the agent's identity, its agreement, where it keeps state, and its limits.

Strict: unknown keys and wrong types are errors that name the field. Relative paths are
resolved against the directory that holds the configuration file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, cast

from protos.errors import CustodesError

MAX_CONFIG_BYTES = 256 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_MAX = 128
Mode = Literal["auto", "enforce", "monitor"]
Marks = Literal["auto", "filesystem", "mount", "inode"]
_MODES: tuple[Mode, ...] = ("auto", "enforce", "monitor")
_MARKS: tuple[Marks, ...] = ("auto", "filesystem", "mount", "inode")


class AgentError(CustodesError):
    """Root of the agent's errors."""


class ConfigError(AgentError):
    """agent.toml is missing, unreadable or not what the agent expects."""


# Checked by hand rather than with pydantic: the daemon imports this module, and pydantic
# would stay resident in it for good (several MB) for a dozen fields read once.


def _int_problem(value: object, low: int, high: int | None) -> str | None:
    if type(value) is not int:
        return f"expected an integer, got {type(value).__name__} {value!r}"
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        return f"{value} is out of range; expected an integer {bound}"
    return None


def _seconds_problem(value: object, high: float) -> str | None:
    if type(value) not in (int, float):
        return f"expected a number of seconds, got {type(value).__name__} {value!r}"
    if not 0 < cast(float, value) <= high:
        return f"{value} is out of range; expected more than 0 and at most {high:g} seconds"
    return None


_INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "queue_events": (16, 10_000_000),
    "group_events": (1, 1_000_000),
    "commit_interval_ms": (1, 10_000),
    "segment_bytes": (4096, 4 * 1024**3),
    "max_event_bytes": (1024, 16 * 1024 * 1024),
    "epoch_events": (0, None),
}
_SECONDS_BOUNDS: dict[str, float] = {
    "watchdog_seconds": 600.0,
    "heartbeat_seconds": 3600.0,
    "reload_poll_seconds": 600.0,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the journal and the daemon; the defaults suit a small clinic server.

    Raises ConfigError naming every field out of its range or of the wrong type.
    """

    queue_events: int = 65536
    group_events: int = 4096
    commit_interval_ms: int = 50
    segment_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 64 * 1024
    watchdog_seconds: float = 5.0
    heartbeat_seconds: float = 30.0
    reload_poll_seconds: float = 1.0
    # Events per signing-key epoch; the journal rotates by itself. 0: the journal's default
    # (agent.journal.EPOCH_EVENTS, 100k events).
    epoch_events: int = 0

    def __post_init__(self) -> None:
        problems = _limit_problems({f: getattr(self, f) for f in _INT_BOUNDS | _SECONDS_BOUNDS})
        if problems:
            raise ConfigError("; ".join(problems))
        for name in _SECONDS_BOUNDS:  # 5 in TOML is 5.0 seconds
            object.__setattr__(self, name, float(getattr(self, name)))


def _limit_problems(values: Mapping[str, object]) -> list[str]:
    """What is wrong with the given limits, one `limits.field: message` each."""
    out: list[str] = []
    for name, value in values.items():
        if name in _INT_BOUNDS:
            problem = _int_problem(value, *_INT_BOUNDS[name])
        else:
            problem = _seconds_problem(value, _SECONDS_BOUNDS[name])
        if problem:
            out.append(f"limits.{name}: {problem}")
    return out


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The parsed agent.toml. Raises ConfigError naming every field that is wrong."""

    agent_id: str
    client: str
    agreement: Path
    state_dir: Path
    journal_dir: Path | None = None  # default: state_dir/journal
    grants_file: Path | None = None  # default: state_dir/grants.json
    server: str | None = None  # host:port of the MSP's server; None until enrolled
    mode: Mode = "auto"
    # How area roots are marked (agent.marks): "auto" a filesystem mark where a root is its
    # own filesystem, else inode marks; "mount" a mount mark on a root that is a mount point
    # (bind mounts elsewhere are not covered); "filesystem" or "inode" insist on one kind.
    marks: Marks = "auto"
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        problems = _problems({f: getattr(self, f) for f in _FIELDS})
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def journal_path(self) -> Path:
        """Where the journal lives."""
        return self.journal_dir if self.journal_dir is not None else self.state_dir / "journal"

    @property
    def grants_path(self) -> Path:
        """The local grants file the agent watches."""
        return self.grants_file if self.grants_file is not None else self.state_dir / "grants.json"

    @property
    def key_dir(self) -> Path:
        """Where the agent keeps its signing key (0700)."""
        return self.state_dir / "keys"

    @property
    def origin(self) -> str:
        """The checkpoint origin line: binds every note to this client and agent."""
        # Imported here: protos.evidence loads cryptography, and agent.config is imported by
        # every agent command, most of which never sign or verify.
        from protos.evidence.origins import agent_origin  # noqa: PLC0415

        return agent_origin(self.client, self.agent_id)


def _problems(values: Mapping[str, object]) -> list[str]:
    """What is wrong with AgentConfig field values (those given), one `field: message` each."""
    out: list[str] = []
    for name in ("agent_id", "client"):
        if name not in values:
            continue
        value = values[name]
        if not isinstance(value, str):
            out.append(f"{name}: expected a string, got {type(value).__name__} {value!r}")
        elif not 1 <= len(value) <= _NAME_MAX or not _NAME.fullmatch(value):
            out.append(
                f"{name}: {value!r} is not a name; expected 1 to {_NAME_MAX} letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
    for name in _PATHS:
        value = values.get(name)
        optional = value is None and name not in _REQUIRED
        if name in values and not (isinstance(value, Path) or optional):
            out.append(f"{name}: expected a path, got {type(value).__name__} {value!r}")
    server = values.get("server")
    if server is not None and not isinstance(server, str):
        out.append(f"server: expected a string host:port, got {type(server).__name__}")
    if values.get("mode", "auto") not in _MODES:
        out.append(f"mode: {values['mode']!r} is not one of {', '.join(_MODES)}")
    if values.get("marks", "auto") not in _MARKS:
        out.append(f"marks: {values['marks']!r} is not one of {', '.join(_MARKS)}")
    if not isinstance(values.get("limits", Limits()), Limits):
        out.append(f"limits: expected a table, got {type(values['limits']).__name__}")
    return out


_FIELDS = tuple(f.name for f in fields(AgentConfig))
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
_REQUIRED = ("agent_id", "client", "agreement", "state_dir")
_PATHS = ("agreement", "state_dir", "journal_dir", "grants_file")


def config_from_mapping(raw: Mapping[str, object]) -> AgentConfig:
    """Build an AgentConfig from TOML-shaped data (paths as strings, `limits` a table).

    Raises ConfigError naming every unknown, missing or wrong field at once.
    """
    problems = [
        f"{k}: unknown key; expected one of {', '.join(_FIELDS)}" for k in raw if k not in _FIELDS
    ]
    problems += [f"{k}: missing; expected it in agent.toml" for k in _REQUIRED if k not in raw]
    values = {k: v for k, v in raw.items() if k in _FIELDS}
    for key in _PATHS:
        if isinstance(values.get(key), str):
            values[key] = Path(cast(str, values[key]))
    table = values.pop("limits", {})
    if isinstance(table, Limits):
        values["limits"] = table
    elif not isinstance(table, Mapping):
        problems.append(f"limits: expected a table, got {type(table).__name__}")
    else:
        problems += [
            f"limits.{k}: unknown key; expected one of {', '.join(_LIMIT_FIELDS)}"
            for k in table
            if k not in _LIMIT_FIELDS
        ]
        known = {k: v for k, v in table.items() if k in _LIMIT_FIELDS}
        limit_problems = _limit_problems(known)
        problems += limit_problems
        if not limit_problems:
            values["limits"] = Limits(**known)
    problems += _problems(values)
    if problems:
        raise ConfigError("; ".join(problems))
    return AgentConfig(**values)  # type: ignore[arg-type]


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def parse_config(text: str, *, source: Path) -> AgentConfig:
    """Parse agent.toml text; relative paths resolve against `source`'s directory.

    Raises ConfigError naming the file and every field that is wrong.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML ({exc})", hint="fix the syntax at the place named"
        ) from exc
    try:
        cfg = config_from_mapping(raw)
    except ConfigError as exc:
        raise ConfigError(
            f"{source}: {exc}",
            hint="see agent/config.py for the fields agent.toml accepts",
        ) from exc
    base = source.parent.resolve()
    return replace(
        cfg,
        agreement=_resolve(base, cfg.agreement),
        state_dir=_resolve(base, cfg.state_dir),
        journal_dir=None if cfg.journal_dir is None else _resolve(base, cfg.journal_dir),
        grants_file=None if cfg.grants_file is None else _resolve(base, cfg.grants_file),
    )


def load_config(path: Path) -> AgentConfig:
    """Read and parse agent.toml at `path`. Raises ConfigError."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the agent configuration {path}: {exc.strerror}",
            hint="pass --config with the path of agent.toml",
        ) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; expected a small file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc})") from exc
    return parse_config(text, source=path)


def render_config(cfg: AgentConfig) -> str:
    """agent.toml text for `cfg` (used by `custodes agent init`)."""
    lines = [
        f'agent_id = "{cfg.agent_id}"',
        f'client = "{cfg.client}"',
        f'agreement = "{cfg.agreement}"',
        f'state_dir = "{cfg.state_dir}"',
        f'mode = "{cfg.mode}"',
    ]
    if cfg.marks != "auto":
        lines.append(f'marks = "{cfg.marks}"')
    if cfg.server:
        lines.append(f'server = "{cfg.server}"')
    return "\n".join(lines) + "\n"
