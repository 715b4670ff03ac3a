"""Notifications against a real HTTP receiver and a real SMTP server on 127.0.0.1.

The receivers fail their first attempts, so the retries (with backoff, recorded in the
store) are what makes the delivery succeed; one that never recovers ends `failed`.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from server.detect.engine import Detector
from server.incidents.model import DAY_S
from server.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Email,
    Notifier,
    NotifyConfig,
    NotifyError,
    Webhook,
    sign,
    verify_signature,
)
from server.store import Store
from tests.server.scenarios.harness import Run, scenario_files

SECRET = b"0123456789abcdef-webhook-secret"


@dataclass
class Receiver:
    """What the HTTP receiver saw: (timestamp, signature, body, verified) per request."""

    fail_first: int
    seen: list[tuple[str, str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _http_handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
            body = self.rfile.read(length)
            ts = self.headers.get(TIMESTAMP_HEADER, "")
            sig = self.headers.get(SIGNATURE_HEADER, "")
            ok = verify_signature(SECRET, ts, sig, body, now=float(ts or 0))
            with rx.lock:
                rx.seen.append((ts, sig, body, ok))
                failing = len(rx.seen) <= rx.fail_first
            self.send_response(503 if failing else (204 if ok else 401))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Receiver]]:
    rx = Receiver(fail_first=2)
    server = HTTPServer(("127.0.0.1", 0), _http_handler(rx))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", rx
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Mailbox:
    """Messages the SMTP server accepted, and how many sessions it refused first."""

    refuse_first: int
    sessions: int = 0
    messages: list[tuple[str, list[str], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _smtp_handler(box: Mailbox) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            with box.lock:
                box.sessions += 1
                refuse = box.sessions <= box.refuse_first
            if refuse:
                self.reply("421 try again later")
                return
            self.reply("220 test ESMTP")
            sender, rcpts = "", []
            for _ in range(100):  # bounded session
                line = self.rfile.readline(4096).decode().rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 test")
                elif verb == "MAIL":
                    sender = line.split(":", 1)[1].strip(" <>")
                    self.reply("250 ok")
                elif verb == "RCPT":
                    rcpts.append(line.split(":", 1)[1].strip(" <>"))
                    self.reply("250 ok")
                elif verb == "DATA":
                    self.reply("354 go")
                    lines = []
                    for _ in range(10_000):
                        data = self.rfile.readline(65536).decode()
                        if data in (".\r\n", ""):
                            break
                        lines.append(data)
                    with box.lock:
                        box.messages.append((sender, rcpts, "".join(lines)))
                    self.reply("250 queued")
                elif verb in ("RSET", "NOOP"):
                    self.reply("250 ok")
                elif verb == "QUIT" or not line:
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 not implemented")

    return Handler


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    box = Mailbox(refuse_first=1)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _smtp_handler(box))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], box
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _detector(store: Store, config: NotifyConfig) -> tuple[Run, Detector]:
    run = Run.prepare(next(p for p in scenario_files() if p.stem == "break_glass"), store)
    detector = Detector(store, {run.compiled.client: run.compiled}, run.clock, notify=config)
    return run, run.play(detector)


def test_signature_verifies_only_the_exact_body_and_a_fresh_timestamp() -> None:
    sig = sign(SECRET, 1000, b"{}")
    assert verify_signature(SECRET, "1000", sig, b"{}", now=1001)
    assert not verify_signature(SECRET, "1000", sig, b"{ }", now=1001)
    assert not verify_signature(b"another-secret-0123", "1000", sig, b"{}", now=1001)
    assert not verify_signature(SECRET, "1000", sig, b"{}", now=5000)
    assert not verify_signature(SECRET, "x", sig, b"{}", now=1000)


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [("ftp://x/hook", SECRET, "not http"), ("https://x/hook", b"short", "16 or more")],
)
def test_bad_webhook_config_is_refused(url: str, secret: bytes, message: str) -> None:
    with pytest.raises(NotifyError, match=message):
        Webhook(url, secret)


def test_opened_incident_webhook_is_signed_and_retried_until_accepted(
    store: Store, http_receiver: tuple[str, Receiver]
) -> None:
    url, rx = http_receiver
    config = NotifyConfig(webhooks=(Webhook(url, SECRET),), backoff_s=10, timeout_s=5)
    run, detector = _detector(store, config)
    notifier = Notifier(detector.incidents, config, run.clock)
    now = run.clock.now
    (first,) = notifier.deliver_due(now)
    assert (first.state, first.attempts, first.next_attempt_unix) == ("pending", 1, now + 10)
    assert "503" in first.last_error
    assert notifier.deliver_due(now + 5) == []  # not due before its backoff
    (second,) = notifier.deliver_due(now + 10)
    assert (second.state, second.attempts, second.next_attempt_unix) == ("pending", 2, now + 30)
    (third,) = notifier.deliver_due(now + 30)
    assert (third.state, third.attempts, third.sent_unix) == ("sent", 3, now + 30)
    assert [ok for *_, ok in rx.seen] == [True, True, True]
    body = json.loads(rx.seen[-1][2])
    assert body["event"] == "opened"
    assert body["rule"] == "break_glass"
    assert "/srv/" not in rx.seen[-1][2].decode()  # paths name patients: never sent
    assert notifier.deliver_due(now + 1000) == []


def test_email_reminders_near_the_due_date_retry_through_a_refusing_relay(
    store: Store, smtp_server: tuple[int, Mailbox]
) -> None:
    port, box = smtp_server
    email = Email("127.0.0.1", port, "custodes@msp.example", ("privacy@harbourside-gp.example",))
    config = NotifyConfig(email=email, reminder_days=(20, 25, 29), backoff_s=1, timeout_s=5)
    run, detector = _detector(store, config)
    notifier = Notifier(detector.incidents, config, run.clock)
    (inc,) = detector.incidents.incidents()
    now = run.clock.now
    (refused,) = notifier.deliver_due(now)
    assert refused.state == "pending"
    assert refused.last_error
    (sent,) = notifier.deliver_due(now + 1)
    assert sent.state == "sent"
    assert sent.event == "opened"
    for day, event in ((19, None), (21, "due_day_20"), (26, "due_day_25"), (31, "overdue")):
        store.touch_agent("host-01", int(inc.aware_unix + day * DAY_S), None)  # not silent
        detector.tick(inc.aware_unix + day * DAY_S)
        detector.tick(inc.aware_unix + day * DAY_S + 60)  # a second tick queues nothing new
        delivered = notifier.deliver_due(inc.aware_unix + day * DAY_S + 120)
        assert [d.event for d in delivered] == ([] if event is None else [event])
    subjects = [m[2] for m in box.messages]
    assert len(box.messages) == 4
    assert "OVERDUE" in subjects[-1]
    assert all(m[1] == ["privacy@harbourside-gp.example"] for m in box.messages)


def test_a_receiver_that_never_answers_ends_failed_and_visible(store: Store) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    config = NotifyConfig(webhooks=(Webhook(url, SECRET),), max_attempts=3, backoff_s=1)
    run, detector = _detector(store, config)
    notifier = Notifier(detector.incidents, config, run.clock)
    now = run.clock.now
    for step in range(3):
        notifier.deliver_due(now + 100 * step)
    (final,) = detector.incidents.deliveries()
    assert (final.state, final.attempts) == ("failed", 3)
    assert "unreachable" in final.last_error
    assert notifier.deliver_due(now + 10_000) == []
