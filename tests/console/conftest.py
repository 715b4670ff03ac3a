"""Console fixtures: a seeded server with the console, a plain HTTP client, real Chromium."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import client as httpclient
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from tests.console.world import PASSWORD, ConsoleServer, build_world

CHROMIUM = Path(os.environ.get("CUSTODES_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# The test server's own CA signs its certificate; TLS is still used, the name not checked.
# Made once: loading the system's CA store costs ~100 ms per context.
_CLIENT_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_CLIENT_TLS.check_hostname = False
_CLIENT_TLS.verify_mode = ssl.CERT_NONE
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class World:
    """The running console server and the ids the seed made."""

    server: ConsoleServer
    ids: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.console_url


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="ctest-console-"))
    server, ids = build_world(base)
    try:
        yield World(server, ids)
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Reply:
    """A response: status, headers (lower-case names; set-cookie kept as a list), body."""

    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Http:
    """A minimal browser stand-in over http.client: a cookie jar and CSRF token scraping."""

    base: str
    jar: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        parts = urllib.parse.urlsplit(self.base)
        context = _CLIENT_TLS
        conn: httpclient.HTTPConnection
        if parts.scheme == "https":
            conn = httpclient.HTTPSConnection(parts.netloc, timeout=30, context=context)
        else:
            conn = httpclient.HTTPConnection(parts.netloc, timeout=30)
        sent = dict(headers or {})
        if self.jar:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        cookies = resp.headers.get_all("Set-Cookie") or []
        for raw in cookies:
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(raw)
            for name, morsel in parsed.items():
                if (morsel["expires"] and "1970" in morsel["expires"]) or morsel.value == "":
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = morsel.value
        conn.close()
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, cookies, data)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)

    def csrf(self, path: str = "/") -> str:
        match = _CSRF.search(self.get(path).text)
        assert match is not None, f"no CSRF token on {path}"
        return match.group(1)

    def sign_in(self, name: str, password: str = PASSWORD) -> Reply:
        token = self.csrf("/signin")
        return self.post("/signin", {"csrf": token, "name": name, "password": password})


@pytest.fixture(name="http")
def http_session(world: World) -> Http:
    return Http(world.url)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page_for(chromium: Any, world: World) -> Iterator[Any]:
    """A factory: a fresh browser context signed in as a person, at laptop or tablet width."""
    contexts: list[Any] = []

    def make(name: str | None, width: int = 1366, height: int = 900) -> Any:
        context = chromium.new_context(
            ignore_https_errors=True,
            viewport={"width": width, "height": height},
            accept_downloads=True,
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        if name is not None:
            page.goto(world.url + "/signin")
            page.fill("#name", name)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(world.url + "/")
        return page

    yield make
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
