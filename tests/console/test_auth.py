"""Sign-in, sessions, CSRF and lockout against the real server process (plain HTTP client)."""

from __future__ import annotations

from tests.console.conftest import Http, World
from tests.console.world import PASSWORD


def test_pages_need_a_session(http: Http) -> None:
    for path in ("/", "/events", "/requests", "/incidents", "/statement.pdf"):
        reply = http.get(path)
        assert reply.status == 303
        assert reply.headers["location"] == "/signin"


def test_session_cookie_is_secure_httponly_strict_and_rotated(http: Http) -> None:
    reply = http.sign_in("po")
    assert reply.status == 303
    cookie = next(c for c in reply.cookies if c.startswith("__Host-custodes-session="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)


def test_a_planted_session_id_never_becomes_a_signed_in_session(world: World) -> None:
    attacker = "A" * 43
    victim = Http(world.url, jar={"__Host-custodes-session": attacker})
    assert victim.sign_in("po").status == 303
    assert victim.jar["__Host-custodes-session"] != attacker
    assert victim.get("/").status == 200
    planted = Http(world.url, jar={"__Host-custodes-session": attacker})
    assert planted.get("/").status == 303


def test_sign_in_rotates_away_the_previous_session(world: World) -> None:
    first = Http(world.url)
    first.sign_in("po")
    old = first.jar["__Host-custodes-session"]
    first.sign_in("po")
    assert first.jar["__Host-custodes-session"] != old
    assert Http(world.url, jar={"__Host-custodes-session": old}).get("/").status == 303


def test_a_form_without_or_with_a_wrong_token_is_refused(http: Http, world: World) -> None:
    http.sign_in("pm")
    request_id = world.ids["request"]
    for form in ({"why": "x"}, {"why": "x", "csrf": "not-the-token"}, {"csrf": ""}):
        reply = http.post(f"/requests/{request_id}/deny", form)
        assert reply.status == 403
    assert "pending" in http.get("/requests").text


def test_a_cross_origin_post_with_the_right_token_is_refused(http: Http, world: World) -> None:
    http.sign_in("pm")
    token = http.csrf("/requests")
    reply = http.post(
        f"/requests/{world.ids['request']}/deny",
        {"csrf": token, "why": "forged"},
        headers={"Origin": "https://evil.example"},
    )
    assert reply.status == 403


def test_another_sessions_token_does_not_work(world: World) -> None:
    a, b = Http(world.url), Http(world.url)
    a.sign_in("pm")
    b.sign_in("pm")
    reply = b.post("/signout", {"csrf": a.csrf("/")})
    assert reply.status == 403


def test_the_sign_in_form_needs_its_token(http: Http) -> None:
    http.get("/signin")
    reply = http.post("/signin", {"name": "po", "password": PASSWORD})
    assert reply.status == 403
    reply = http.post("/signin", {"csrf": "0" * 64, "name": "po", "password": PASSWORD})
    assert reply.status == 403


def test_sign_out_ends_the_session_on_the_server(http: Http, world: World) -> None:
    http.sign_in("po")
    cookie = http.jar["__Host-custodes-session"]
    assert http.post("/signout", {"csrf": http.csrf("/")}).status == 303
    assert Http(world.url, jar={"__Host-custodes-session": cookie}).get("/").status == 303


def test_lockout_after_repeated_failures_refuses_even_the_right_password(world: World) -> None:
    client = Http(world.url)
    statuses = [client.sign_in("tech2", "wrong password guess").status for _ in range(5)]
    assert statuses[:4] == [401] * 4
    assert statuses[4] == 429
    locked = client.sign_in("tech2")
    assert locked.status == 429
    assert "locked" in locked.text
    assert "__Host-custodes-session" not in client.jar


def test_unknown_names_and_wrong_passwords_read_the_same(http: Http) -> None:
    nobody = http.sign_in("nobody-here", "whatever password")
    wrong = Http(http.base).sign_in("auditor", "not the password")
    assert nobody.status == wrong.status == 401
    assert "do not match" in nobody.text
    assert "do not match" in wrong.text


def test_security_headers_on_every_page(http: Http) -> None:
    http.sign_in("po")
    for path in ("/", "/signin", "/events"):
        headers = http.get(path).headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert "max-age" in headers["strict-transport-security"]
