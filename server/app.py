"""The running server: two TLS listeners, the servicers, limits, health, graceful shutdown.

gRPC Python cannot *request* a client certificate without *requiring* it, so the server
listens twice (ADR in this docstring, kept next to the code it explains):

* the main port (`--listen`, default 127.0.0.1:7443) requires a client certificate signed
  by this server's CA: AgentChannel, Query and health;
* the enrolment port (`--enrol-listen`, default: the main port + 1) is server-authenticated
  TLS only and serves Enrollment and health; a new agent has no certificate yet and pins
  the server by the fingerprint carried in its token.

There is no plaintext port. Every store call runs on one database thread (SQLite
connections belong to one thread, and one writer is what SQLite wants anyway).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.errors import CustodesError
from protos.evidence.keys import load_private_key
from protos.evidence.note import NoteSigner
from protos.wire import pb, rpc
from server import access_service, enrol
from server.datadir import DataDir
from server.detect.service import TICK_SECONDS, DetectionRuntime
from server.ingest import AgentChannelService
from server.push import PushingChannel
from server.query import QueryService
from server.store import open_store
from server.store.base import AgentRow, Store, StoreError
from server.store.sqlite import SqliteStore
from server.tls import server_credentials

if TYPE_CHECKING:
    from server.console.app import ConsoleOptions, RunningConsole
    from server.detect.engine import Detector

log = structlog.get_logger()
T = TypeVar("T")

SERVER_KEY_NAME = "custodes-server"
# Ingest allocates a handful of tracked objects per event (links, records, observations,
# rows) that live for one batch of up to 4096 events. At CPython's default young-generation
# threshold (700) the collector ran mid-batch, promoted them and walked them again in the
# older generations: ~1.6 s of collection per 200k events ingested, on the GIL (measured
# with gc.callbacks in bench/ingest_bench.py's server). Above the objects two batches in
# flight hold, young collections happen a few times a minute instead of ~50 times a second;
# cycles are still collected, only later, within this many young objects.
GC_YOUNG_THRESHOLD = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one caller may send and how long anything may take."""

    max_message_bytes: int = 8 * 1024 * 1024
    max_batch_events: int = 4096
    max_in_flight: int = 8
    events_per_second: float = 250_000.0  # per agent, token bucket
    burst_events: int = 500_000
    hello_seconds: float = 10.0  # the first message must arrive within this
    idle_seconds: float = 600.0  # a stream with no message for this long is closed
    keepalive_seconds: int = 30
    max_streams: int = 2000


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What `custodes server run` was asked to do."""

    data: DataDir
    listen: str = "127.0.0.1:7443"
    enrol_listen: str | None = None  # None: the main port + 1
    database_url: str | None = None  # None: SQLite in the data directory
    limits: Limits = field(default_factory=Limits)
    console: ConsoleOptions | None = None  # None: no web console
    detect_seconds: float = TICK_SECONDS  # how often the detector's periodic checks run

    def enrol_address(self) -> str:
        """Where Enrollment is served."""
        if self.enrol_listen:
            return self.enrol_listen
        host, _, port = self.listen.rpartition(":")
        return f"{host}:{int(port) + 1}" if int(port) else f"{host}:0"


class Runtime:
    """What the servicers share: the store (on its own thread), keys, limits."""

    def __init__(self, data: DataDir, store: Store, db: ThreadPoolExecutor, limits: Limits) -> None:
        self.data = data
        self.store = store
        self.limits = limits
        self._db = db
        self.signer = NoteSigner(SERVER_KEY_NAME, load_private_key(data.signing_key))
        self.ca = enrol.KeyAndCert(data.read(data.ca_key), data.read(data.ca_cert))
        self.server_fingerprint = enrol.fingerprint(data.read(data.server_cert))
        self.detector: Detector | None = None  # set once detection is open; ingest feeds it

    async def db(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store call on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, lambda: fn(*args))

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Queue a store call on the database thread from any thread, without the event loop.

        Calls run in the order they were queued (one thread), after those queued before.
        """
        return self._db.submit(fn, *args)


class EnrollmentService(rpc.EnrollmentServicer):
    """Exchange a single-use token and a CSR for a client certificate."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def Enroll(  # noqa: N802 - the generated servicer's method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        try:
            return await self._enroll(request)
        except enrol.TokenRefusedError as exc:
            log.warning("enrolment_refused", reason=str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except enrol.EnrolmentError as exc:
            log.warning("enrolment_refused", reason=str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable")  # abort raises

    async def _enroll(self, request: pb.EnrollRequest) -> pb.EnrollResponse:
        token = enrol.parse_token(request.token)
        if not enrol.same_fingerprint(token.fingerprint, self.rt.server_fingerprint):
            raise enrol.TokenRefusedError(
                "the token pins another server certificate, expected this server's "
                f"{self.rt.server_fingerprint[:16]}…"
            )
        kind = request.kind or "agent"
        if kind not in enrol.KINDS:
            raise enrol.EnrolmentError(f"kind {kind!r} is unknown, expected agent or person")
        name = _csr_name(request.csr_pem)
        if kind == "agent":
            if len(request.evidence_public_key) != 32:
                raise enrol.EnrolmentError(
                    f"the evidence public key is {len(request.evidence_public_key)} bytes, "
                    "expected a raw 32-byte Ed25519 key"
                )
            Ed25519PublicKey.from_public_bytes(request.evidence_public_key)
            if await self.rt.db(self.rt.store.get_agent, name) is not None:
                raise enrol.EnrolmentError(
                    f"agent {name!r} is already enrolled, expected a new agent id "
                    "(revoke the old one and pick a new id in agent.toml)"
                )
        now = dt.datetime.now(dt.UTC)
        try:
            row = await self.rt.db(
                self.rt.store.consume_token, token.secret_hash, int(now.timestamp())
            )
        except StoreError as exc:
            raise enrol.TokenRefusedError(
                "the enrolment token is unknown, already used or expired",
            ) from exc
        if kind == "person" and row.name:
            name = row.name  # a person's token names them; `custodes login` does not know it
        if row.kind != kind or (row.name and row.name != name):
            raise enrol.TokenRefusedError(
                f"the token was issued for {row.kind} {row.name or '(any name)'!r}, "
                f"not for {kind} {name!r}"
            )
        identity = enrol.Identity(kind=kind, client=row.client, name=name)
        cert = enrol.sign_csr(self.rt.ca, request.csr_pem, identity, now)
        if kind == "agent":
            await self.rt.db(
                self.rt.store.add_agent,
                AgentRow(
                    agent_id=name,
                    client=row.client,
                    public_key=bytes(request.evidence_public_key),
                    cert_fingerprint=enrol.fingerprint(cert),
                    enrolled_unix=int(now.timestamp()),
                    revoked_unix=None,
                    next_seq=0,
                    head_hash=bytes(32),
                    last_checkpoint=None,
                    last_seen_unix=None,
                    hostname=request.hostname[:255],
                ),
            )
        log.info("enrolled", kind=kind, client=row.client, identity=name)
        return pb.EnrollResponse(
            identity=name,
            client=row.client,
            certificate_pem=cert,
            ca_pem=self.rt.ca.cert_pem,
            server_signing_public_key=self.rt.signer.verifier().public,
            server_log_origin=SERVER_KEY_NAME,
        )


def _csr_name(csr_pem: bytes) -> str:
    if len(csr_pem) > enrol.MAX_CSR_BYTES:
        raise enrol.EnrolmentError(
            f"the CSR is {len(csr_pem)} bytes, expected at most {enrol.MAX_CSR_BYTES}"
        )
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise enrol.EnrolmentError(f"the CSR is not a PEM certificate request ({exc})") from exc
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise enrol.EnrolmentError("the CSR has no single common name, expected the agent id")
    return enrol.check_name("agent", cns[0].value)


def _grpc_options(limits: Limits) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", limits.keepalive_seconds * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_concurrent_streams", 100),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class Running:
    """Both listeners, started; `ports` are the bound ports (useful with port 0)."""

    main: grpc.aio.Server
    enrolment: grpc.aio.Server
    health: health.aio.HealthServicer
    main_port: int
    enrol_port: int
    runtime: Runtime
    access: access_service.AccessRuntime
    detection: DetectionRuntime
    console: RunningConsole | None = None

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let running ones finish for `grace` seconds, then close."""
        await self.health.enter_graceful_shutdown()
        if self.console is not None:
            await self.console.stop()
        await self.access.stop()
        await self.detection.stop()
        await asyncio.gather(self.main.stop(grace), self.enrolment.stop(grace))


def _listen(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials, flag: str) -> int:
    """Bind `address` for `server` (TLS); the port bound. CustodesError when it cannot be
    bound (grpc says only RuntimeError: taken by another process, or not this machine's)."""
    try:
        return int(server.add_secure_port(address, creds))
    except RuntimeError as exc:
        raise CustodesError(
            f"cannot listen on {address} ({flag}): the port is in use by another process, "
            "or the address is not one of this machine's",
            hint=f"stop what holds the port, or give {flag} another HOST:PORT",
        ) from exc


async def start(options: ServerOptions, db: ThreadPoolExecutor) -> Running:
    """Open the store, bind both listeners and start serving."""
    data = options.data
    data.require_initialised()
    url = options.database_url or data.default_database_url()
    loop = asyncio.get_running_loop()

    def _open() -> Store:
        store = open_store(url)
        store.migrate()
        if isinstance(store, SqliteStore):  # ingest's commits then never copy the whole WAL
            store.checkpoint_in_background()
        return store

    store = await loop.run_in_executor(db, _open)
    rt = Runtime(data, store, db, options.limits)
    grpc_options = _grpc_options(options.limits)
    health_servicer = health.aio.HealthServicer()

    main = grpc.aio.server(options=grpc_options, maximum_concurrent_rpcs=options.limits.max_streams)
    jit = access_service.install(rt, main)  # the Access servicer and its pusher
    detection = await DetectionRuntime.open(
        rt,
        lambda: sorted(jit.core.store.agreement_heads()),
        jit.core.agreements.current,
        database_url=url,
        period_s=options.detect_seconds,
    )
    rt.detector = detection.detector
    jit.pusher.agreement_listeners.append(detection.agreement_changed)
    rpc.add_AgentChannelServicer_to_server(
        PushingChannel(AgentChannelService(rt), jit.pusher), main
    )
    rpc.add_QueryServicer_to_server(QueryService(rt), main)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, main)
    main_port = _listen(
        main, options.listen, server_credentials(data, require_client_cert=True), "--listen"
    )

    enrolment = grpc.aio.server(options=grpc_options, maximum_concurrent_rpcs=64)
    rpc.add_EnrollmentServicer_to_server(EnrollmentService(rt), enrolment)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, enrolment)
    enrol_port = _listen(
        enrolment,
        options.enrol_address(),
        server_credentials(data, require_client_cert=False),
        "--enrol-listen",
    )
    # The console binds first: a port it cannot have stops the start before anything runs.
    console = None
    if options.console is not None:
        from server.console import app as console_app  # noqa: PLC0415 - aiohttp only when used

        console = await console_app.start(rt, jit, options.console)
    await main.start()
    await enrolment.start()
    jit.start()
    detection.start()
    for service in (
        "",
        "custodes.v1.AgentChannel",
        "custodes.v1.Enrollment",
        "custodes.v1.Query",
        "custodes.v1.Access",
    ):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return Running(
        main, enrolment, health_servicer, main_port, enrol_port, rt, jit, detection, console
    )


def tune_gc() -> None:
    """Collect cycles less often (GC_YOUNG_THRESHOLD) and never walk what start-up built.

    For the server process only (`serve`): freezing moves every object alive now (modules,
    classes, the runtime) out of the collector's reach, so full collections walk only what
    came after.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(options: ServerOptions) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custodes-db")
    try:
        running = await start(options, db)
        tune_gc()
        log.info(
            "server_started",
            listen=options.listen,
            port=running.main_port,
            enrol_port=running.enrol_port,
            fingerprint=running.runtime.server_fingerprint,
            console=running.console.url if running.console else None,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        started = time.monotonic()
        log.info("server_stopping")
        await running.stop()
        await loop.run_in_executor(db, running.runtime.store.close)
        log.info("server_stopped", seconds=round(time.monotonic() - started, 3))
    finally:
        db.shutdown(wait=True)
