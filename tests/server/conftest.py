"""Server fixtures: a throwaway PostgreSQL cluster, and a `store` fixture over both dialects.

`postgres_url` (session) runs initdb in a temporary directory and starts `postgres` on a
free loopback port as an unprivileged user (initdb refuses root: as root we use the
`postgres` system user when it exists, else create `custodes-pgtest`). It skips only when
no initdb binary exists; tests using it carry `@pytest.mark.postgres`, which the suite turns
into a failure under CUSTODES_STRICT=1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from server.store import AgentRow, Store, StoredRecord, open_store

PG_USER = "custodes"  # the database superuser inside the throwaway cluster
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def find_initdb() -> Path | None:
    """initdb on PATH, else the newest /usr/lib/postgresql/*/bin/initdb."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve()
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _os_user() -> str | None:
    """The unprivileged user to run the cluster as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "custodes-pgtest"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "custodes-pgtest",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return "custodes-pgtest"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway PostgreSQL cluster; `url` points at its `postgres` database."""

    process: subprocess.Popen[bytes]
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID, then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(initdb: Path, *, fsync: bool = True) -> Cluster:
    """initdb + postgres on a free loopback port; waits (bounded) until it accepts connections."""
    user = _os_user()
    directory = Path(tempfile.mkdtemp(prefix="custodes-pg-"))
    data, sockets = directory / "data", directory / "sock"
    sockets.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (directory, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        [
            str(initdb),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
            "--locale=C",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        user=user,
        cwd=directory,
    )
    port = _free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(sockets),
        "fsync": "on" if fsync else "off",
        "max_connections": "50",
    }
    args = [str(initdb.parent / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    log = (directory / "postgres.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, user=user, cwd=directory)
    cluster = Cluster(process, directory, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            text = (directory / "postgres.log").read_text(errors="replace")[-2000:]
            cluster.stop()
            raise RuntimeError(f"postgres exited with {process.returncode}: {text}")
        try:
            with psycopg.connect(cluster.url, connect_timeout=2):
                return cluster
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole session (skips without initdb)."""
    initdb = find_initdb()
    if initdb is None:
        pytest.skip("no initdb binary: PostgreSQL server is not installed")
    cluster = start_cluster(initdb, fsync=False)  # tests need correctness, not power-loss safety
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_cluster: Cluster) -> str:
    """A superuser URL to the throwaway cluster's `postgres` database."""
    return pg_cluster.url


@contextlib.contextmanager
def fresh_database(cluster: Cluster) -> Iterator[str]:
    """CREATE DATABASE for one test; dropped afterwards. Yields its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield cluster.database_url(name)
    finally:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_database(pg_cluster: Cluster) -> Iterator[str]:
    """The URL of a fresh, empty database in the throwaway cluster."""
    with fresh_database(pg_cluster) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A location for a fresh store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.sqlite")
    else:
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        with fresh_database(cluster) as url:
            yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, migrated store; every test using it runs against SQLite and PostgreSQL."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


# -- test data -------------------------------------------------------------------------------

ZERO_HASH = bytes(32)


def agent_row(agent_id: str = "clinic-01", client: str = "clinic", **changes: object) -> AgentRow:
    """A freshly enrolled agent's row."""
    row = AgentRow(
        agent_id=agent_id,
        client=client,
        public_key=hashlib.sha256(agent_id.encode()).digest(),
        cert_fingerprint=hashlib.sha256(b"cert" + agent_id.encode()).hexdigest(),
        enrolled_unix=1_700_000_000,
        revoked_unix=None,
        next_seq=0,
        head_hash=ZERO_HASH,
        last_checkpoint=None,
        last_seen_unix=None,
        hostname=f"{agent_id}.example",
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def records(
    agent_id: str,
    start: int,
    count: int,
    *,
    client: str = "clinic",
    salt: bytes = b"",
    size: int = 300,
    **columns: object,
) -> list[StoredRecord]:
    """`count` records from seq `start`; `salt` changes the bytes (a different history)."""
    out = []
    for seq in range(start, start + count):
        body = hashlib.sha256(salt + agent_id.encode() + seq.to_bytes(8, "big")).digest()
        event = (body * (size // 32 + 1))[:size]
        out.append(
            StoredRecord(
                agent_id=agent_id,
                seq=seq,
                event=event,
                chain_hash=hashlib.sha256(b"chain" + event).digest(),
                client=client,
                unix_nanos=1_700_000_000_000_000_000 + seq * 1_000_000,
                kind="access",
                **columns,  # type: ignore[arg-type]
            )
        )
    return out


def append(store: Store, recs: list[StoredRecord], expected: int | None = None) -> int:
    """append_batch with a checkpoint note naming the batch's size."""
    first = recs[0].seq if recs else (expected or 0)
    size = first + len(recs)
    return store.append_batch(
        recs[0].agent_id if recs else "clinic-01",
        first if expected is None else expected,
        recs,
        agent_checkpoint=f"agent checkpoint {size}\n".encode(),
        new_head=recs[-1].chain_hash if recs else ZERO_HASH,
        heartbeat_unix=1_700_000_100 + size,
    )
