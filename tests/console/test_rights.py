"""The masking rule and the sign-in throttle, as tables (pure functions)."""

from __future__ import annotations

import pytest

from server.access import Person, Role
from server.console import auth, rights
from server.store.console import ThrottleRow

KEY = b"k" * 32
PATH = "/srv/clinic/records/Tran_Mei_Lin.pdf"


@pytest.mark.parametrize(
    ("viewer", "technician", "sees"),
    [
        (Person("pm", Role.APPROVER, client="clinic"), "tech1", True),
        (Person("po", Role.AUDITOR, client="clinic"), "tech1", True),
        (Person("aud", Role.AUDITOR), "tech1", True),
        (Person("lead", Role.APPROVER), "tech1", False),
        (Person("admin", Role.ADMIN), "tech1", False),
        (Person("tech1", Role.TECHNICIAN, technician="tech1"), "tech1", True),
        (Person("tech1", Role.TECHNICIAN, technician="tech1"), "tech2", False),
        (Person("tech1", Role.TECHNICIAN, technician="tech1"), None, False),
        (Person("other", Role.APPROVER, client="other"), "tech1", False),
        (Person("other-po", Role.AUDITOR, client="other"), "tech1", False),
    ],
)
def test_who_sees_paths(viewer: Person, technician: str | None, sees: bool) -> None:
    assert rights.sees_sensitive(viewer, "clinic", technician) is sees
    shown = rights.shown_path(viewer, "clinic", technician, PATH, KEY)
    assert (shown == PATH) is sees
    assert ("Tran_Mei_Lin" in shown) is sees


@pytest.mark.parametrize(
    "path",
    ["/srv/a/Smith_John.pdf", "relative/Smith_John", "/Smith_John", "/srv/Smith_John.tar.gz.x"],
)
def test_a_masked_path_never_holds_a_name(path: str) -> None:
    masked = rights.mask_path(path, KEY)
    assert "Smith" not in masked
    assert "John" not in masked
    assert masked == rights.mask_path(path, KEY)  # the same file reads the same
    assert masked != rights.mask_path(path + "2", KEY)


def test_a_masked_command_line_keeps_only_the_program() -> None:
    assert rights.mask_cmdline("/usr/bin/less /srv/Smith_John.pdf") == "less •••"
    assert rights.mask_cmdline("top") == "top"


def test_five_failures_lock_the_name_not_four() -> None:
    policy = auth.ThrottlePolicy()
    keys = auth.throttle_keys("alice", "192.0.2.7")
    rows: list[ThrottleRow] = []
    for i in range(4):
        rows = auth.after_failure(rows, keys, 1000 + i, policy)
        assert auth.locked_until(rows, 1000 + i) == 0
    rows = auth.after_failure(rows, keys, 1004, policy)
    assert auth.locked_until(rows, 1004) == 1004 + policy.lock_seconds
    assert auth.locked_until(rows, 1004 + policy.lock_seconds) == 0


def test_failures_outside_the_window_start_a_new_count() -> None:
    policy = auth.ThrottlePolicy()
    keys = auth.throttle_keys("alice", "192.0.2.7")
    rows = auth.after_failure([], keys, 0, policy)
    rows = auth.after_failure(rows, keys, policy.window_seconds, policy)
    assert {r.failures for r in rows} == {1}


def test_session_timeouts() -> None:
    _, row = auth.new_session("alice", "127.0.0.1", 0)
    assert auth.session_alive(row, auth.IDLE_SECONDS - 1)
    assert not auth.session_alive(row, auth.IDLE_SECONDS)


def test_passwords_are_argon2id_and_verify() -> None:
    hashed = auth.hash_password("a long enough passphrase")
    assert hashed.startswith("$argon2id$")
    assert auth.verify_password(hashed, "a long enough passphrase")
    assert not auth.verify_password(hashed, "a long enough passphrasE")
    assert not auth.verify_password(None, "a long enough passphrase")
    with pytest.raises(auth.WeakPasswordError):
        auth.hash_password("short")


@pytest.mark.parametrize(
    ("expected", "given"), [("abc", None), ("abc", ""), ("", ""), ("abc", "abd")]
)
def test_csrf_tokens_compare_closed(expected: str, given: str | None) -> None:
    assert not auth.same_token(expected, given)
