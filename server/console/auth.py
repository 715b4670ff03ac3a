"""Sign-in for the console: argon2id passwords, server-side sessions, CSRF tokens, lockout.

* Passwords: argon2id (memory-hard) via argon2-cffi; a sign-in for an unknown name still
  verifies against a dummy hash, so timing does not tell which names exist.
* Sessions: a random 256-bit id in a `__Host-` cookie (Secure, HttpOnly, SameSite=Strict);
  the store keeps only its SHA-256. A new id is made at every sign-in and whatever session
  the browser presented is deleted (no fixation). Idle and absolute timeouts.
* CSRF: a synchroniser token per session, in every form, compared in constant time. The
  sign-in form, which has no session yet, carries an HMAC of a pre-session cookie instead.
* Throttling: failures are counted per name and per client address in a window; past the
  limit the key is locked for a while, whatever the password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from protos.errors import CustodesError
from server.store.console import SessionRow, ThrottleRow

SESSION_COOKIE = "__Host-custodes-session"
PRE_COOKIE = "__Host-custodes-pre"
INSECURE_SESSION_COOKIE = "custodes-session"  # plain HTTP on loopback cannot use __Host-
INSECURE_PRE_COOKIE = "custodes-pre"
IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 12 * 3600
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How many failures in what window lock a key, and for how long."""

    name_failures: int = 5
    address_failures: int = 20
    window_seconds: int = 15 * 60
    lock_seconds: int = 15 * 60


class AuthError(CustodesError):
    """Root of the console's sign-in errors."""


class SignInRefusedError(AuthError):
    """The name or password is wrong (the message never says which)."""


class LockedOutError(AuthError):
    """Too many failed sign-ins: the name or address is locked until `until_unix`."""

    def __init__(self, message: str, until_unix: int) -> None:
        super().__init__(message)
        self.until_unix = until_unix


class WeakPasswordError(AuthError):
    """A new password does not meet the minimum."""


_HASHER = PasswordHasher()  # argon2id, 64 MiB, t=3, p=4 (argon2-cffi's RFC 9106 low-memory)
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash of a new password; WeakPasswordError if it is too short or long."""
    if len(password) < MIN_PASSWORD:
        raise WeakPasswordError(
            f"the password has {len(password)} characters; expected at least {MIN_PASSWORD}",
            hint="a passphrase of several words is easy to remember and hard to guess",
        )
    if len(password) > MAX_PASSWORD:
        raise WeakPasswordError(f"the password is over {MAX_PASSWORD} characters")
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored` (None: verifies a dummy, returns False)."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_secret() -> str:
    """A random URL-safe secret (session ids, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def id_hash(session_id: str) -> bytes:
    """What the store keeps of a session id."""
    return hashlib.sha256(b"custodes-console-session\0" + session_id.encode()).digest()


def new_session(name: str, address: str, now: int) -> tuple[str, SessionRow]:
    """A fresh session id (for the cookie) and the row to store."""
    sid = new_secret()
    return sid, SessionRow(id_hash(sid), name, new_secret(), now, now, address[:64])


def session_alive(row: SessionRow, now: int) -> bool:
    """False once the session was idle too long or is older than the absolute limit."""
    return now - row.seen_unix < IDLE_SECONDS and now - row.created_unix < ABSOLUTE_SECONDS


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token (an empty expected token never matches)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def signin_token(key: bytes, pre: str) -> str:
    """The CSRF token of the sign-in form, bound to the pre-session cookie."""
    return hmac.new(key, b"signin\0" + pre.encode(), hashlib.sha256).hexdigest()


def throttle_keys(name: str, address: str) -> tuple[str, str]:
    """The keys a sign-in attempt is counted under."""
    return f"name:{name[:200]}", f"addr:{address[:64]}"


def locked_until(rows: Sequence[ThrottleRow], now: int) -> int:
    """The latest lock among `rows` still in force, or 0."""
    return max((r.locked_until_unix for r in rows if r.locked_until_unix > now), default=0)


def after_failure(
    rows: Sequence[ThrottleRow], keys: Sequence[str], now: int, policy: ThrottlePolicy
) -> list[ThrottleRow]:
    """The throttle rows after one more failure for every key in `keys`."""
    have = {r.key: r for r in rows}
    out = []
    for key in keys:
        old = have.get(key)
        if old is None or now - old.window_start_unix >= policy.window_seconds:
            failures, start = 1, now
        else:
            failures, start = old.failures + 1, old.window_start_unix
        limit = policy.name_failures if key.startswith("name:") else policy.address_failures
        locked = now + policy.lock_seconds if failures >= limit else 0
        if old is not None and old.locked_until_unix > now:
            locked = max(locked, old.locked_until_unix)
        out.append(ThrottleRow(key, failures, start, locked))
    return out
