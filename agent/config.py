"""agent.toml: the agent's identity, its agreement, where it keeps state, and its limits.

Strict: unknown keys and wrong types are errors that name the field. Relative paths are
resolved against the directory that holds the configuration file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.errors import CustodesError

MAX_CONFIG_BYTES = 256 * 1024


class AgentError(CustodesError):
    """Root of the agent's errors."""


class ConfigError(AgentError):
    """agent.toml is missing, unreadable or not what the agent expects."""


class Limits(BaseModel):
    """Bounds on the journal and the daemon; the defaults suit a small clinic server."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    queue_events: int = Field(default=65536, ge=16, le=10_000_000)
    group_events: int = Field(default=4096, ge=1, le=1_000_000)
    commit_interval_ms: int = Field(default=50, ge=1, le=10_000)
    segment_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=4 * 1024**3)
    max_event_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    watchdog_seconds: float = Field(default=5.0, gt=0, le=600)
    heartbeat_seconds: float = Field(default=30.0, gt=0, le=3600)
    reload_poll_seconds: float = Field(default=1.0, gt=0, le=600)
    # Events per signing-key epoch; the journal rotates by itself. 0: the journal's default
    # (agent.journal.EPOCH_EVENTS, 100k events).
    epoch_events: int = Field(default=0, ge=0)


class AgentConfig(BaseModel):
    """The parsed agent.toml."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    client: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    agreement: Path
    state_dir: Path
    journal_dir: Path | None = None  # default: state_dir/journal
    grants_file: Path | None = None  # default: state_dir/grants.json
    server: str | None = None  # host:port of the MSP's server; None until enrolled
    mode: Literal["auto", "enforce", "monitor"] = "auto"
    # How area roots are marked (agent.marks): "auto" a filesystem mark where a root is its
    # own filesystem, else inode marks; "mount" a mount mark on a root that is a mount point
    # (bind mounts elsewhere are not covered); "filesystem" or "inode" insist on one kind.
    marks: Literal["auto", "filesystem", "mount", "inode"] = "auto"
    limits: Limits = Field(default_factory=Limits)

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


def _paths_to_str(raw: dict[str, object]) -> dict[str, object]:
    # TOML has no path type; strict pydantic refuses str for Path, so convert the known keys.
    out = dict(raw)
    for key in ("agreement", "state_dir", "journal_dir", "grants_file"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = Path(value)
    return out


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
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
        cfg = AgentConfig.model_validate(_paths_to_str(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"{source}: {problems}",
            hint="see agent/config.py for the fields agent.toml accepts",
        ) from exc
    base = source.parent.resolve()
    return cfg.model_copy(
        update={
            "agreement": _resolve(base, cfg.agreement),
            "state_dir": _resolve(base, cfg.state_dir),
            "journal_dir": _resolve(base, cfg.journal_dir),
            "grants_file": _resolve(base, cfg.grants_file),
        }
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
