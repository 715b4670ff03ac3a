"""The access requests page through the real server: the pending and live on the first page,
then the ended requests 50 at a time, newest first (keyset, not OFFSET), scoped by client."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.console.conftest import Http, World
from tests.console.world import CLINIC, ENDED_REQUESTS, OTHER, TECH2_ENDED

_ROW = re.compile(r"<tr><td>(jit-[a-z0-9-]+)</td>")
_NEXT = re.compile(r'<a class="button" rel="next" href="([^"]+)"')


def history(http: Http, path: str) -> tuple[list[str], str, str]:
    """The history rows' ids, the next page's path ("" on the last) and the page's text."""
    reply = http.get(path)
    assert reply.status == 200, reply.text[:300]
    found = _NEXT.search(reply.text)
    after = found.group(1).replace("&amp;", "&") if found else ""
    return _ROW.findall(reply.text), after, reply.text


def page_through(http: Http, path: str) -> list[list[str]]:
    pages = []
    for _ in range(10):
        ids, path, _ = history(http, path)
        pages.append(ids)
        if not path:
            return pages
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize(
    ("person", "path"), [("auditor", f"/requests?client={OTHER}"), ("other-pm", "/requests")]
)
def test_the_history_pages_newest_first_each_request_once(
    http: Http, world: World, person: str, path: str
) -> None:
    http.sign_in(person)
    pages = page_through(http, path)
    assert [len(p) for p in pages] == [50, ENDED_REQUESTS - 50]
    seen = [i for p in pages for i in p]
    # made a minute apart, oldest first; the first two pairs at one instant each (the id,
    # descending, breaks the tie)
    order = sorted(range(ENDED_REQUESTS), key=lambda i: (i // 2 * 2 if i < 4 else i, i))
    assert seen == [f"jit-old{i:03d}" for i in reversed(order)]


def test_later_pages_show_the_history_alone(http: Http, world: World) -> None:
    http.sign_in("auditor")
    _, after, first = history(http, "/requests")
    assert "Pending" in first
    assert f"client={OTHER}" not in after  # every client: no filter carried on
    ids, _, second = history(http, after)
    assert ids
    assert "Pending" not in second
    assert "History, continued" in second


def test_a_client_person_sees_only_their_client(http: Http, world: World) -> None:
    http.sign_in("pm")
    ids, after, text = history(http, "/requests")
    assert not [i for i in ids if i.startswith("jit-old")]
    assert after == ""
    assert world.ids["request"] in text  # their own client's pending request
    assert http.get(f"/requests?client={OTHER}").status == 403
    http.sign_in("other-pm")
    assert http.get(f"/requests?client={CLINIC}").status == 403
    assert world.ids["request"] not in http.get("/requests").text


def test_a_technician_sees_only_their_own_requests(http: Http, world: World) -> None:
    http.sign_in("tech1")  # (tech2 may be locked out by test_auth by now)
    seen = [i for p in page_through(http, "/requests") for i in p]
    order = sorted(
        range(TECH2_ENDED, ENDED_REQUESTS), key=lambda i: (i // 2 * 2 if i < 4 else i, i)
    )
    assert [i for i in seen if i.startswith("jit-old")] == [
        f"jit-old{i:03d}" for i in reversed(order)
    ]
    assert set(seen) - {f"jit-old{i:03d}" for i in order} <= {world.ids["request"]}  # their own


# "%C2%B2" is "²": a digit to str.isdigit that int() refuses.
@pytest.mark.parametrize(
    "after", ["x", "123", ":jit-old001", "99999999999999999999:z" * 20, "%C2%B2:x"]
)
def test_a_malformed_cursor_starts_from_the_first_page_or_reads_nothing(
    http: Http, world: World, after: str
) -> None:
    http.sign_in("auditor")
    reply: Any = http.get(f"/requests?client={OTHER}&after={after}")
    assert reply.status == 200
    # Read as no cursor, so shown as the first page (pending and live first), not as a
    # continuation.
    assert "History, continued" not in reply.text
