"""Durations as the agreements write them: "90s", "15m", "4h", "2d", "3w", "7y", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "y": timedelta(days=365),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_ORDER = "ywdhms"
_PART = re.compile(r"([0-9]{1,6})([ywdhms])")
_WHOLE = re.compile(r"(?:[0-9]{1,6}[ywdhms])+")


def parse_duration(text: str) -> timedelta:
    """Parse a positive duration such as "4h" or "1h30m"; raise ValueError otherwise.

    Units run from largest to smallest, each at most once: y (365 days), w, d, h, m, s.
    """
    if not isinstance(text, str):  # pydantic reports ValueError, not TypeError
        raise ValueError(  # noqa: TRY004
            f"expected a duration string such as '4h', got {type(text).__name__}"
        )
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a duration; expected e.g. '90s', '15m', '4h', '2d', '7y'"
        )
    total = timedelta()
    last = -1
    for number, unit in _PART.findall(text):
        rank = _ORDER.index(unit)
        if rank <= last:
            raise ValueError(
                f"{text!r} repeats or misorders units; expected largest first, e.g. '1h30m'"
            )
        last = rank
        total += int(number) * _UNITS[unit]
    if total <= timedelta():
        raise ValueError(f"{text!r} is zero; expected a positive duration")
    return total


def format_duration(value: timedelta) -> str:
    """The shortest agreement-style spelling of `value` (whole seconds)."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit in "ydhms":
        size = int(_UNITS[unit].total_seconds())
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
