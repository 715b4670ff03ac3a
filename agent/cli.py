"""`custodes agent ...` (the daemon and its journal tools)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import AgentConfig, ConfigError, config_from_mapping, load_config, render_config
from agent.enroll import register_enroll
from agent.keys import epoch_verifier, load_or_create
from protos.errors import CustodesError
from protos.evidence.note import NoteVerifier
from protos.files import write_atomic

DEFAULT_CONFIG = Path("/etc/custodes/agent.toml")


class VerifyFailedError(CustodesError):
    """The journal does not verify."""


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_config(Path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground (systemd runs it as Type=notify)."""
    from agent.daemon import Daemon  # noqa: PLC0415 - keeps `custodes --help` light

    return Daemon(_config(args), Path(args.config)).run()


def _trusted_verifier(cfg: AgentConfig, vkey: str | None) -> NoteVerifier:
    if vkey:
        text = Path(vkey).read_text(encoding="ascii")[:1024].strip()
        return NoteVerifier.from_vkey(text)
    try:
        return epoch_verifier(cfg.key_dir, 0)
    except OSError as exc:
        raise ConfigError(
            f"no epoch-0 verifier key at {cfg.key_dir}/epoch-0.vkey ({exc.strerror})",
            hint="pass --vkey with the agent's enrolled verifier key",
        ) from exc


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the whole local journal: every chain link and every checkpoint signature."""
    cfg = _config(args)
    verifier = _trusted_verifier(cfg, args.vkey)
    from agent.verify import verify_journal  # noqa: PLC0415 - keeps `agent run` light

    report = verify_journal(cfg.journal_path, verifier, origin=cfg.origin)
    summary = (
        f"events {report.first_seq}..{report.next_seq - 1}, {report.checkpoints} checkpoints "
        f"(signed up to size {report.signed_size}), {report.denies} denies, epoch "
        f"{report.epochs}"
    )
    if not report.ok:
        raise VerifyFailedError(
            f"the journal in {cfg.journal_path} does not verify: {report.problem}",
            hint="keep the journal files unchanged for investigation and tell the MSP's auditor",
        )
    print(f"journal verifies: {summary}")
    if report.notes:
        print(f"note: {report.notes}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """Print the latest signed checkpoint note."""
    cfg = _config(args)
    from agent.verify import latest_checkpoint  # noqa: PLC0415 - keeps `agent run` light

    note = latest_checkpoint(cfg.journal_path)
    if not note:
        raise CustodesError(
            f"the journal in {cfg.journal_path} has no signed checkpoint yet",
            hint="start the agent once (`custodes agent run`)",
        )
    sys.stdout.write(note.decode("utf-8"))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write agent.toml and create the first signing key; print its verifier key."""
    path = Path(args.config)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; expected a new file", hint="pass --force to replace")
    cfg = config_from_mapping(
        {
            "agent_id": args.agent_id,
            "client": args.client,
            "agreement": Path(args.agreement).resolve(),
            "state_dir": Path(args.state_dir).resolve(),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_config(cfg).encode("utf-8"))
    key = load_or_create(cfg.key_dir, cfg.origin)
    print(key.signer.vkey())
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` group."""
    group = groups.add_parser("agent", help="run the agent daemon and inspect its journal")
    sub = group.add_subparsers(dest="agent_command", metavar="COMMAND")
    sub.required = True

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="path of agent.toml")
        return p

    with_config(sub.add_parser("run", help="run the daemon in the foreground")).set_defaults(
        func=cmd_run
    )
    journal = sub.add_parser("journal", help="inspect the local journal")
    jsub = journal.add_subparsers(dest="journal_command", metavar="COMMAND")
    jsub.required = True
    verify = with_config(jsub.add_parser("verify", help="verify chain and every checkpoint"))
    verify.add_argument("--vkey", help="file with the enrolled verifier key (default: local)")
    verify.set_defaults(func=cmd_verify)
    with_config(
        sub.add_parser("checkpoint", help="print the latest signed checkpoint note")
    ).set_defaults(func=cmd_checkpoint)
    init = with_config(sub.add_parser("init", help="write agent.toml and create the key"))
    init.add_argument("--agent-id", required=True)
    init.add_argument("--client", required=True)
    init.add_argument("--agreement", required=True)
    init.add_argument("--state-dir", required=True)
    init.add_argument("--force", action="store_true")
    init.set_defaults(func=cmd_init)
    register_enroll(sub)
