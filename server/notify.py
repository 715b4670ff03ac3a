"""Notifications about incidents: HMAC-SHA256-signed webhooks and SMTP email, with retries.

Deliveries are queued in the store (`notify_deliveries`) when an incident opens and as its
s 26WH due date nears; `Notifier.deliver_due` sends what is due, retries a failure with
exponential backoff and marks it failed after `max_attempts`, all visible in the store.

Webhook signature: header `X-Custodes-Timestamp: <unix seconds>` and
`X-Custodes-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`; receivers
check it with `verify_signature` (and refuse stale timestamps). Messages name the incident,
rule, client, technician and counts, never file paths (they carry patient names).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import structlog

from protos.errors import CustodesError
from server.incidents.model import Incident
from server.incidents.register import iso
from server.store.incidents import Delivery, IncidentStore

log = structlog.get_logger("custodes.server.notify")

TIMESTAMP_HEADER = "X-Custodes-Timestamp"
SIGNATURE_HEADER = "X-Custodes-Signature"
MAX_CONFIG_BYTES = 64 * 1024
MAX_BACKOFF_S = 3600.0


class NotifyError(CustodesError):
    """A notification could not be configured or sent."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """An HTTP(S) endpoint and the shared secret its requests are signed with."""

    url: str
    secret: bytes

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise NotifyError(f"webhook URL {self.url!r} is not http(s); expected https://...")
        if len(self.secret) < 16:
            raise NotifyError(
                f"webhook secret for {self.url} is {len(self.secret)} bytes; expected 16 or more"
            )


@dataclass(frozen=True, slots=True)
class Email:
    """An SMTP relay and who receives incident mail."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Where notifications go, when reminders fire, and how failures are retried."""

    webhooks: tuple[Webhook, ...] = ()
    email: Email | None = None
    reminder_days: tuple[int, ...] = (20, 25, 29)
    max_attempts: int = 6
    backoff_s: float = 30.0
    timeout_s: float = 10.0

    def targets(self) -> list[tuple[str, str]]:
        """(channel, target) pairs every notification goes to."""
        out = [("webhook", w.url) for w in self.webhooks]
        if self.email is not None:
            out += [("email", r) for r in self.email.recipients]
        return out


def load_config(path: Path) -> NotifyConfig:
    """Read a JSON notification config (webhooks, email, reminder_days, retries).

    Raises NotifyError naming the file and what was expected.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise NotifyError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        data = json.loads(raw)
        hooks = tuple(
            Webhook(str(h["url"]), str(h["secret"]).encode()) for h in data.get("webhooks", [])
        )
        mail = data.get("email")
        email = (
            None
            if mail is None
            else Email(
                host=str(mail["host"]),
                port=int(mail.get("port", 25)),
                sender=str(mail["sender"]),
                recipients=tuple(str(r) for r in mail["recipients"]),
                starttls=bool(mail.get("starttls", False)),
                username=mail.get("username"),
                password=mail.get("password"),
            )
        )
        return NotifyConfig(
            webhooks=hooks,
            email=email,
            reminder_days=tuple(int(d) for d in data.get("reminder_days", (20, 25, 29))),
            max_attempts=int(data.get("max_attempts", 6)),
            backoff_s=float(data.get("backoff_s", 30.0)),
        )
    except OSError as exc:
        raise NotifyError(f"cannot read {path} ({exc.strerror})") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotifyError(
            f"{path} is not a notification config ({exc!r}); expected JSON with "
            '"webhooks": [{"url", "secret"}], "email": {"host", "sender", "recipients"}'
        ) from exc


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = 300.0,
) -> bool:
    """True when `signature` is ours over `body` and `timestamp` is within `tolerance_s`."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def message(incident: Incident, event: str, now: float) -> dict[str, Any]:
    """What a notification says about an incident (no file paths)."""
    return {
        "event": event,
        "incident": incident.label,
        "id": incident.id,
        "client": incident.client,
        "rule": incident.rule,
        "summary": incident.summary,
        "technician": incident.technician,
        "areas": list(incident.areas),
        "kinds": list(incident.kinds),
        "individuals_estimate": incident.individuals,
        "state": incident.state.value,
        "aware": iso(incident.aware_unix),
        "due": iso(incident.due_unix),
        "days_left": round(incident.days_left(now), 1),
        "overdue": incident.overdue(now),
    }


def _subject(incident: Incident, event: str) -> str:
    if event == "opened":
        return f"[Custodes] Possible breach {incident.label} ({incident.client}): {incident.rule}"
    if event == "overdue":
        return f"[Custodes] {incident.label} assessment is OVERDUE (s 26WH)"
    return f"[Custodes] {incident.label} assessment due {iso(incident.due_unix)[:10]}"


class Notifier:
    """Sends due deliveries and records each attempt."""

    def __init__(
        self,
        incidents: IncidentStore,
        config: NotifyConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.incidents = incidents
        self.config = config
        self.clock = clock
        self._hooks = {w.url: w for w in config.webhooks}

    def deliver_due(self, now: float | None = None, limit: int = 100) -> list[Delivery]:
        """Attempt every due delivery once; return them as stored after the attempt."""
        at = self.clock() if now is None else now
        done: list[Delivery] = []
        for d in self.incidents.due_deliveries(at, limit):
            error = ""
            try:
                self._send(d, at)
            except NotifyError as exc:
                error = str(exc)
            attempts = d.attempts + 1
            retry_at: float | None = None
            if error and attempts < self.config.max_attempts:
                retry_at = at + min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** (attempts - 1))
            self.incidents.delivery_done(d.id, now=at, error=error, retry_at=retry_at)
            if error:
                log.warning(
                    "notification_failed",
                    delivery=d.id,
                    channel=d.channel,
                    target=d.target,
                    attempt=attempts,
                    retry_at=retry_at,
                    error=error[:200],
                )
            else:
                log.info("notification_sent", delivery=d.id, channel=d.channel, target=d.target)
            done.extend(x for x in self.incidents.deliveries(d.incident_id) if x.id == d.id)
        return done

    def _send(self, d: Delivery, now: float) -> None:
        incident = self.incidents.get(d.incident_id)
        body = message(incident, d.event, now)
        if d.channel == "webhook":
            hook = self._hooks.get(d.target)
            if hook is None:
                raise NotifyError(f"webhook {d.target} is no longer configured")
            self.send_webhook(hook, json.dumps(body).encode(), int(now))
        elif d.channel == "email":
            if self.config.email is None:
                raise NotifyError("email is no longer configured")
            self.send_email(self.config.email, d.target, _subject(incident, d.event), body)
        else:
            raise NotifyError(f"channel {d.channel!r} is unknown; expected webhook or email")

    def send_webhook(self, hook: Webhook, body: bytes, timestamp: int) -> None:
        """POST a signed JSON body; NotifyError unless the receiver answers 2xx in time."""
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in Webhook
            hook.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
                "User-Agent": "custodes-notify/1",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310
                response.read(4096)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"webhook {hook.url} answered HTTP {exc.code}; expected 2xx") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise NotifyError(f"webhook {hook.url} unreachable ({exc}); expected 2xx") from exc
        if not 200 <= status < 300:
            raise NotifyError(f"webhook {hook.url} answered HTTP {status}; expected 2xx")

    def send_email(self, email: Email, to: str, subject: str, body: dict[str, Any]) -> None:
        """Send one plain-text mail through the configured relay; NotifyError on failure."""
        msg = EmailMessage()
        msg["From"] = email.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(_mail_text(body))
        try:
            with smtplib.SMTP(email.host, email.port, timeout=self.config.timeout_s) as smtp:
                if email.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if email.username:
                    smtp.login(email.username, email.password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(
                f"mail to {to} via {email.host}:{email.port} failed ({exc}); expected it accepted"
            ) from exc


def _mail_text(body: dict[str, Any]) -> str:
    lines = [f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in body.items()]
    lines.append("")
    lines.append("Review it with: custodes incidents show " + str(body["id"]))
    return "\n".join(lines) + "\n"


def reminder_event(incident: Incident, days: Sequence[int], now: float) -> str | None:
    """The reminder due for an undecided incident now: "overdue", "due_day_N", or None."""
    if incident.overdue(now):
        return "overdue"
    passed = [d for d in days if now >= incident.aware_unix + d * 86_400]
    return f"due_day_{max(passed)}" if passed else None
