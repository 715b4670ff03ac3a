"""Real server processes and enrolled agents for the transport tests (no tests of its own here
beyond the harness's self-check): `custodes server run` on free loopback ports, real TLS.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import keys as epoch_keys
from agent.config import AgentConfig, load_config
from agent.enroll import Credentials, enroll
from protos.evidence.chain import GENESIS, Link, extend
from protos.evidence.note import Checkpoint, NoteSigner
from protos.wire import pb, rpc

ROOT = Path(__file__).resolve().parents[2]
CUSTODES = [str(ROOT / ".venv" / "bin" / "custodes")]
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `custodes ARGS` and return the finished process."""
    proc = subprocess.run(
        [*CUSTODES, "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"custodes {' '.join(args)} failed: {proc.stderr}")
    return proc


@dataclass
class ServerProc:
    """One `custodes server run` subprocess over a data directory."""

    data: Path
    database: str | None = None
    port: int = field(default_factory=free_port)
    enrol_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    served: bool = False  # it has served on these ports (restarts keep them: agents know them)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def init(self) -> None:
        extra = ["--database", self.database] if self.database else []
        cli("server", "init", "--data", str(self.data), *extra)

    def start(self) -> None:
        """Start the server and wait until it serves. free_port's ports are only free when
        picked: if another process took one meanwhile (the server then says it cannot
        listen), a first start picks new ones, at most three times."""
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_serving()
            except AssertionError:
                if attempt == 2 or self.served or "cannot listen on" not in self.log_text():
                    raise
                self.new_ports()
                continue
            self.served = True
            return

    def new_ports(self) -> None:
        """Pick new free ports for a first start that could not listen."""
        self.port, self.enrol_port = free_port(), free_port()

    def extra_args(self) -> list[str]:
        """Options of `server run` beyond the data directory, listeners and database."""
        return []

    def spawn(self) -> None:
        self.log = self.data / f"server-{time.monotonic_ns()}.log"
        cmd = [
            *CUSTODES,
            "--log-format",
            "json",
            "server",
            "run",
            "--data",
            str(self.data),
            "--listen",
            self.address,
            "--enrol-listen",
            f"127.0.0.1:{self.enrol_port}",
            *self.extra_args(),
        ]
        if self.database:
            cmd += ["--database", self.database]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def wait_serving(self) -> None:
        ca = (self.data / "ca" / "ca.crt").read_bytes()
        deadline = time.monotonic() + WAIT_S
        creds = grpc.ssl_channel_credentials(ca)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_text()}")
            with grpc.secure_channel(f"127.0.0.1:{self.enrol_port}", creds) as ch:
                try:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service="custodes.v1.Enrollment"), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"server not serving after {WAIT_S}s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT_S)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT_S)

    def token(self, client: str, *extra: str) -> str:
        args = ["server", "enroll-token", "--data", str(self.data), "--client", client, *extra]
        if self.database:
            args += ["--database", self.database]
        return cli(*args).stdout.strip()


@contextlib.contextmanager
def running_server(data: Path, database: str | None = None) -> Iterator[ServerProc]:
    server = ServerProc(data, database)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Agent:
    """An enrolled agent's config, credentials and evidence signer."""

    cfg: AgentConfig
    creds: Credentials
    config_path: Path

    @property
    def signer(self) -> NoteSigner:
        return epoch_keys.load_or_create(self.cfg.key_dir, self.cfg.origin).signer

    def channel(self, server: ServerProc, *, cert: bytes | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.creds.ca.read_bytes(),
            private_key=self.creds.key.read_bytes(),
            certificate_chain=cert or self.creds.cert.read_bytes(),
        )
        return grpc.secure_channel(server.address, creds)


def write_config(directory: Path, agent_id: str, client: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agreement.yaml").write_text("# placeholder\n")
    path = directory / "agent.toml"
    path.write_text(
        f'agent_id = "{agent_id}"\nclient = "{client}"\nagreement = "agreement.yaml"\n'
        f'state_dir = "state"\n'
    )
    return path


def enrol_agent(server: ServerProc, directory: Path, agent_id: str, client: str) -> Agent:
    path = write_config(directory, agent_id, client)
    cfg = load_config(path)
    token = server.token(client)
    creds = enroll(cfg, server.address, token, server.enrol_port)
    return Agent(cfg, creds, path)


def make_events(agent: Agent, start: int, count: int, *, technician: str = "tech1") -> list[bytes]:
    """Serialised Events of `agent` numbered from `start`."""
    out = []
    for seq in range(start, start + count):
        ev = pb.Event(
            agent_id=agent.cfg.agent_id,
            client=agent.cfg.client,
            boot_id="boot-1",
            seq=seq,
            unix_nanos=1_700_000_000_000_000_000 + seq * 1_000_000,
        )
        ev.access.subject.technician = technician
        ev.access.subject.os_user = "root"
        ev.access.object.path = f"/srv/records/patient-{seq}.pdf"
        ev.access.object.area = "records"
        ev.access.action = pb.ACTION_READ
        ev.access.verdict = pb.VERDICT_ALLOW if seq % 3 else pb.VERDICT_DENY
        ev.access.rule = "grant"
        out.append(ev.SerializeToString())
    return out


@dataclass
class Chain:
    """A locally built evidence chain for crafting batches by hand."""

    agent: Agent
    links: list[Link] = field(default_factory=list)

    def grow(self, count: int) -> None:
        prev = self.links[-1].hash if self.links else GENESIS
        start = len(self.links)
        self.links += extend(prev, start, make_events(self.agent, start, count))

    def prev(self, seq: int) -> bytes:
        return self.links[seq - 1].hash if seq else GENESIS

    def checkpoint(self, size: int, signer: NoteSigner | None = None) -> bytes:
        s = signer or self.agent.signer
        head = self.links[size - 1].hash if size else GENESIS
        return s.sign(Checkpoint(self.agent.cfg.origin, size, head))

    def batch(self, start: int, end: int, batch_id: int = 1) -> pb.EventBatch:
        return pb.EventBatch(
            batch_id=batch_id,
            prev_hash=self.prev(start),
            records=[
                pb.EventRecord(seq=k.seq, event=k.event, chain_hash=k.hash)
                for k in self.links[start:end]
            ],
            checkpoint=self.checkpoint(end),
        )


def converse(
    agent: Agent, server: ServerProc, batches: Sequence[pb.EventBatch], *, timeout: float = 20.0
) -> list[pb.ServerMessage]:
    """Hello then `batches`; every server message until the server ends the stream or
    one reply per batch has arrived."""
    hello = pb.AgentMessage(hello=pb.Hello(agent_id=agent.cfg.agent_id))

    def requests() -> Iterator[pb.AgentMessage]:
        yield hello
        for b in batches:
            yield pb.AgentMessage(batch=b)

    replies: list[pb.ServerMessage] = []
    with agent.channel(server) as ch:
        call = rpc.AgentChannelStub(ch).Connect(requests(), timeout=timeout)
        try:
            for msg in call:
                replies.append(msg)
                if len(replies) == len(batches) + 1:
                    call.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise
    return replies


def test_harness_starts_and_stops_a_server(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        assert server.stop() == 0
        assert "server_stopped" in server.log_text()
