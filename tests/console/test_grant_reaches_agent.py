"""A practice manager approves in Chromium and the grant reaches a real enrolled agent.

Reuses the just-in-time e2e world (real server, `custodes login` people, an enrolled agent
enforcing with fanotify on a directory this test creates), restarted with the console.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.conftest import TECH, accounts  # noqa: F401 - the session fixture
from tests.console.conftest import screenshot
from tests.console.world import PASSWORD, ConsoleServer
from tests.e2e.jit_world import CLIENT, JitWorld, jit_world
from tests.server.test_ingest_harness import CUSTODES

pytestmark = [
    pytest.mark.root,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not sys.platform.startswith("linux"),
        reason="needs root and Linux fanotify",
    ),
]


@pytest.fixture(scope="module")
def console_world(accounts: dict[str, pwd.struct_passwd]) -> Iterator[JitWorld]:  # noqa: F811
    with jit_world(accounts[TECH]) as world:
        old = world.server
        assert old.stop() == 0
        server = ConsoleServer(old.data, port=old.port, enrol_port=old.enrol_port)
        server.start()
        world.server = server
        proc = subprocess.run(
            [*CUSTODES, "server", "user", "passwd", "mgr", "--stdin", "--data", str(old.data)],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        try:
            yield world
        finally:
            server.kill()  # jit_world stops the server it started, not this one


def test_manager_approves_in_the_browser_and_the_agent_lets_the_technician_in(
    console_world: JitWorld, chromium: Any
) -> None:
    # One Playwright per session (the `chromium` fixture): a second sync_playwright() inside
    # the first one's running loop is refused.
    world = console_world
    assert world.opens() == "EPERM"
    request_id = world.request()
    server = world.server
    assert isinstance(server, ConsoleServer)
    context = chromium.new_context(ignore_https_errors=True)
    try:
        page: Any = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(server.console_url + "/signin")
        page.fill("#name", "mgr")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.console_url + "/")
        assert CLIENT in page.inner_text("main")
        page.goto(server.console_url + "/requests")
        card = page.locator("article.request", has_text=request_id)
        card.get_by_role("button", name="Approve").click()
        page.wait_for_selector(".flash.ok")
        screenshot(page, "grant-approved-for-agent")
    finally:
        context.close()
    world.wait_open("ok")
