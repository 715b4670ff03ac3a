"""Heartbeats travel over the shipper's stream and show in `custodes server agent list`."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.config import Limits
from agent.enroll import Credentials
from agent.events import Origin
from agent.heartbeat import HeartbeatSample
from agent.journal import Journal
from agent.ship import ShipLimits, Shipper
from protos.wire import pb
from server.store import open_store
from tests.e2e.test_shipping import wait_for
from tests.server.test_ingest_harness import cli, enrol_agent, running_server


def sample(mode: str, marks: int, version: str) -> pb.Heartbeat:
    return HeartbeatSample(
        unix_nanos=1_700_000_000_000_000_000,
        mode=mode,
        mode_note="monitor mode: not root, cannot block" if mode == "monitor" else "",
        rss_bytes=38 * 2**20,
        cpu_percent=0.5,
        events_per_second=0.0,
        queue_depth=0,
        marks=marks,
        agreement_version=version,
        journal_next_seq=0,
        dropped=0,
        shipper_rss_bytes=53 * 2**20 if mode == "monitor" else 0,
    ).to_wire()


def test_the_latest_heartbeat_reaches_the_server_and_the_agent_list(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        agent = enrol_agent(server, tmp_path / "agent", "host-09", "clinic-a")
        cfg = agent.cfg
        journal = Journal.open(
            cfg.journal_path, Origin(cfg.agent_id, cfg.client, "hb"), cfg.key_dir, Limits()
        )
        shipper = Shipper(
            journal,
            Credentials(cfg.state_dir),
            cfg.agent_id,
            cfg.client,
            limits=ShipLimits(heartbeat_seconds=30.0, backoff_max=1.0),
        )

        def stored() -> pb.Heartbeat | None:
            store = open_store(f"sqlite:///{server.data / 'custodes.db'}")
            try:
                row = store.get_agent(cfg.agent_id)
            finally:
                store.close()
            if row is None or row.last_heartbeat is None:
                return None
            return pb.Heartbeat.FromString(row.last_heartbeat)

        stop = threading.Event()
        shipper.send_heartbeat(sample("enforcing", 120, "v1"))
        thread = shipper.run_in_thread(stop)
        try:
            wait_for(lambda: (b := stored()) is not None and b.marks == 120, "first heartbeat")
            # A mode change goes out at once, not after heartbeat_seconds.
            shipper.send_heartbeat(sample("monitor", 0, "v2"))
            wait_for(
                lambda: (b := stored()) is not None and b.mode == pb.GATE_MODE_MONITOR,
                "the mode change",
                timeout=10.0,
            )
        finally:
            stop.set()
            thread.join(10)
            journal.close()
        listing = cli("server", "agent", "list", "--data", str(server.data)).stdout
        line = next(x for x in listing.splitlines() if x.startswith("host-09\t"))
        assert "mode=monitor" in line
        assert "marks=0" in line
        assert "memory=38.0MiB+53.0MiB" in line  # the daemon and its shipping child
        assert "agreement=v2" in line
        assert "last_seen=never" not in line
        assert "not root" in line
