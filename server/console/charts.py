"""Server-side SVG pictures: no JavaScript, no fonts or scripts from anywhere else.

Every chart is a pure function from plain numbers to an SVG string. Text is escaped here
(the templates mark the result safe). Each chart has a <title> and an aria-label, and the
page shows the same numbers in a table for screen readers and for print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

_INK = "#1f2a37"
_MUTED = "#6b7785"
_GRID = "#e3e7ec"
_ALLOW = "#2f6f8f"
_DENY = "#b3261e"
_WARN = "#b26a00"
_OK = "#2e7d32"


def safe(svg: str) -> Markup:
    """A chart for a template: every text in it was escaped when it was drawn."""
    return Markup(svg)  # noqa: S704 - built only by this module, which escapes all text


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(label)}" class="chart">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", size: int = 11, fill: str = _MUTED
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" '
        f'text-anchor="{anchor}">{escape(text)}</text>'
    )


def heat_map(
    technicians: Sequence[str], days: Sequence[str], counts: dict[tuple[str, str], int], label: str
) -> str:
    """Accesses per technician (rows) per day (columns); darker is more."""
    if not technicians or not days:
        return ""
    left, top, cell = 110, 28, 22
    width = left + cell * len(days) + 10
    height = top + cell * len(technicians) + 10
    peak = max(counts.values(), default=0) or 1
    body = []
    for j, day in enumerate(days):
        if j % 2 == 0 or len(days) <= 16:
            body.append(_text(left + j * cell + cell / 2, top - 8, day, anchor="middle", size=10))
    for i, tech in enumerate(technicians):
        y = top + i * cell
        body.append(_text(left - 8, y + cell * 0.68, tech[:16], anchor="end", fill=_INK))
        for j, day in enumerate(days):
            n = counts.get((tech, day), 0)
            x = left + j * cell
            if n:
                # log scale: one access stays visible next to a bulk read of thousands
                strength = 0.18 + 0.82 * math.log1p(n) / math.log1p(peak)
                fill = f'fill="{_ALLOW}" fill-opacity="{strength:.2f}"'
            else:
                fill = 'fill="#f4f6f8"'
            body.append(
                f'<rect x="{x + 1}" y="{y + 1}" width="{cell - 2}" height="{cell - 2}" rx="3" '
                f"{fill}><title>{escape(tech)}, {escape(day)}: {n} access"
                f"{'es' if n != 1 else ''}</title></rect>"
            )
    return _svg(width, height, label, body)


@dataclass(frozen=True, slots=True)
class Mark:
    """A point on a timeline: when, which lane, what it says."""

    at_unix: float
    lane: str  # "allow", "deny", "observed", "step", "due", ...
    text: str


def timeline(
    marks: Sequence[Mark], start: float, end: float, ticks: Sequence[tuple[float, str]], label: str
) -> str:
    """Marks on a horizontal time axis, one lane per kind (evidence above, steps below)."""
    if not marks or end <= start:
        return ""
    lanes = sorted({m.lane for m in marks}, key=lambda lane: (lane != "deny", lane))
    left, right, top, lane_h = 90, 20, 16, 26
    width = 760
    height = top + lane_h * len(lanes) + 30
    span = end - start
    colours = {"deny": _DENY, "allow": _ALLOW, "observed": _WARN, "step": _OK, "due": _DENY}

    def x_of(t: float) -> float:
        return left + (width - left - right) * min(max((t - start) / span, 0.0), 1.0)

    body = []
    for i, lane in enumerate(lanes):
        y = top + i * lane_h + lane_h / 2
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_GRID}"/>'
        )
        body.append(_text(left - 8, y + 4, lane, anchor="end", fill=_INK))
    for m in marks:
        y = top + lanes.index(m.lane) * lane_h + lane_h / 2
        colour = colours.get(m.lane, _INK)
        body.append(
            f'<circle cx="{x_of(m.at_unix):.1f}" cy="{y:.1f}" r="5" fill="{colour}" '
            f'fill-opacity="0.8"><title>{escape(m.text)}</title></circle>'
        )
    axis = top + lane_h * len(lanes) + 4
    body.append(
        f'<line x1="{left}" x2="{width - right}" y1="{axis}" y2="{axis}" stroke="{_MUTED}"/>'
    )
    for i, (t, text) in enumerate(ticks):
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        body.append(_text(x_of(t), axis + 16, text, anchor=anchor, size=10))
    return _svg(width, height, label, body)


@dataclass(frozen=True, slots=True)
class HealthDay:
    """One day of an agent's life: events stored, lifecycle problems, restarts."""

    day: str
    events: int
    problems: int
    starts: int


def health_bars(days: Sequence[HealthDay], label: str) -> str:
    """Events per day as bars; days with problems marked red, restarts marked amber."""
    if not days:
        return ""
    left, top, bar, gap, plot_h = 40, 12, 18, 6, 90
    width = left + (bar + gap) * len(days) + 10
    height = top + plot_h + 40
    peak = max((d.events for d in days), default=0) or 1
    body = [
        f'<line x1="{left}" x2="{width - 10}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="{_MUTED}"/>',
        _text(left - 6, top + 8, f"{peak:,}", anchor="end", size=9),
    ]
    for i, d in enumerate(days):
        x = left + i * (bar + gap)
        h = max(plot_h * math.log1p(d.events) / math.log1p(peak), 1 if d.events else 0)
        colour = _DENY if d.problems else _ALLOW
        body.append(
            f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar}" height="{h:.1f}" rx="2" '
            f'fill="{colour}" fill-opacity="0.75"><title>{escape(d.day)}: {d.events:,} events, '
            f"{d.problems} problem(s), {d.starts} start(s)</title></rect>"
        )
        if d.starts:
            body.append(
                f'<circle cx="{x + bar / 2}" cy="{top + plot_h + 10}" r="4" fill="{_WARN}"/>'
            )
        if i % 2 == 0 or len(days) <= 14:
            body.append(_text(x + bar / 2, top + plot_h + 28, d.day, anchor="middle", size=9))
    return _svg(width, height, label, body)
