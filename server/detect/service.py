"""Detection in the running server: the Detector, its periodic tick and the notifier.

`server/app.py` opens it after the store and the access runtime: the Detector starts from
the latest stored agreement version of every client and follows new versions through the
access watcher (`Pusher.agreement_listeners`); ingest calls it after each committed batch
and each heartbeat (`Runtime.detector`); a task here ticks it every `period_s` (silent
agents, integrity events recorded by ingest, due-date reminders, catch-up after a crash)
and then sends due notifications. A backlog (a server started on events no Detector has
evaluated) is caught up a chunk per turn of the database thread, with progress logged.

The notifier does network I/O, so it runs on its own thread with its own store connection
and never holds up the database thread; it is only started when notify.json names targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from policies.compile import CompiledAgreement
from protos.errors import CustodesError
from server.detect.engine import Detector
from server.notify import Notifier, NotifyConfig, load_config
from server.store import Store, open_store
from server.store.incidents import IncidentStore

if TYPE_CHECKING:
    from server.app import Runtime

log = structlog.get_logger("custodes.server.detect")

TICK_SECONDS = 30.0
CATCH_UP_ROUND_S = 3600.0  # catch_up's default bound; the periodic round bounds it by a period
NOTIFY_CONFIG = "notify.json"


def notify_config(root: Path) -> NotifyConfig:
    """The data directory's notify.json, or no notifications when there is none."""
    path = root / NOTIFY_CONFIG
    return load_config(path) if path.exists() else NotifyConfig()


class DetectionRuntime:
    """The Detector wired to the server: agreements, the periodic tick, notifications."""

    def __init__(
        self,
        rt: Runtime,
        detector: Detector,
        compile_current: Callable[[str], CompiledAgreement],
        *,
        database_url: str,
        period_s: float = TICK_SECONDS,
    ) -> None:
        self.rt = rt
        self.detector = detector
        self._compile = compile_current
        self._url = database_url
        self.period_s = period_s
        self._task: asyncio.Task[None] | None = None
        self._notify_pool: ThreadPoolExecutor | None = None
        self._notifier: Notifier | None = None
        self._notify_store: Store | None = None

    @classmethod
    async def open(
        cls,
        rt: Runtime,
        clients: Callable[[], list[str]],
        compile_current: Callable[[str], CompiledAgreement],
        *,
        database_url: str,
        period_s: float = TICK_SECONDS,
    ) -> DetectionRuntime:
        """Build the Detector (on the database thread) from every client's current agreement.

        Raises NotifyError for a bad notify.json, StoreError if the store cannot be read.
        """
        config = notify_config(rt.data.root)

        def build() -> Detector:
            agreements: dict[str, CompiledAgreement] = {}
            for client in clients():
                try:
                    agreements[client] = compile_current(client)
                except CustodesError as exc:  # evaluate that client with the defaults
                    log.warning("detector_agreement_failed", client=client, error=str(exc)[:300])
            return Detector(rt.store, agreements, time.time, notify=config)

        detector = await rt.db(build)
        return cls(rt, detector, compile_current, database_url=database_url, period_s=period_s)

    def start(self) -> None:
        """Start ticking on the running loop (the first tick catches up at once)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop ticking and close the notifier's connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._notify_pool is not None:
            if self._notify_store is not None:
                await asyncio.get_running_loop().run_in_executor(
                    self._notify_pool, self._notify_store.close
                )
            self._notify_pool.shutdown(wait=True)

    async def agreement_changed(self, client: str) -> None:
        """Follow a newly stored agreement version of `client` (an access watcher listener)."""
        try:
            compiled, changed = await self.rt.db(self._use, client)
        except CustodesError as exc:  # a bad stored version must not stop the watcher
            log.warning("detector_agreement_failed", client=client, error=str(exc)[:300])
            return
        if changed:
            log.info("detector_agreement_used", client=client, version=compiled.version)

    def _use(self, client: str) -> tuple[CompiledAgreement, bool]:
        compiled = self._compile(client)
        return compiled, self.detector.use_agreement(compiled)

    async def tick(self) -> bool:
        """One round: the stored backlog in steps (for a period at most), the Detector's
        periodic checks, then due notifications; False while a backlog is left."""
        finished = await self.catch_up(self.period_s)
        await self.rt.db(self._tick, time.time(), finished)
        if self.detector.notify.targets():
            await self._deliver()
        return finished

    def _tick(self, now: float, finished: bool) -> None:
        # What ingest committed since the last step is a page at most: read it in this turn.
        self.detector.tick(now, catch_up=finished)

    async def catch_up(self, within_s: float = CATCH_UP_ROUND_S) -> bool:
        """Evaluate stored events the Detector has not, one chunk per turn of the database
        thread (pages and ingest queued meanwhile run between chunks), logging progress;
        True once none are left, False when the step limit or `within_s` ran out first."""
        detector = self.detector
        total = await self.rt.db(detector.backlog)
        if total <= detector.chunk:
            return True
        log.info("detector_catch_up_started", total=total)
        done = 0
        started = time.monotonic()
        # Live batches of agents still behind add to the backlog: allow for some of them.
        for _ in range(2 * (total // detector.chunk) + 10):
            step = await self.rt.db(detector.catch_up_step)
            done += step.evaluated
            if step.finished:
                log.info("detector_caught_up", done=done, total=max(done, total))
                return True
            log.info("detector_catching_up", done=done, total=max(done, total))
            if time.monotonic() - started > within_s:
                break
            await asyncio.sleep(0)
        log.info("detector_catch_up_paused", done=done, total=max(done, total))
        return False

    async def _run(self) -> None:
        while True:
            pause = self.period_s
            try:
                if not await self.tick():
                    pause = 0.0  # the periodic checks ran; go on with the backlog at once
            except CustodesError as exc:  # the store or a notifier hiccup: try next round
                log.warning("detector_tick_failed", error=str(exc)[:300])
            except Exception as exc:  # detection must outlive one bad round
                log.exception("detector_tick_crashed", error=repr(exc)[:300])
            await asyncio.sleep(pause)

    async def _deliver(self) -> None:
        if self._notify_pool is None:
            self._notify_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custodes-nt")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._notify_pool, self._deliver_due)

    def _deliver_due(self) -> None:
        if self._notifier is None:
            self._notify_store = open_store(self._url, migrate=False)
            self._notifier = Notifier(IncidentStore(self._notify_store), self.detector.notify)
        self._notifier.deliver_due()
