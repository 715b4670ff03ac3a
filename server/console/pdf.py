"""The client access statement as PDF (fpdf2, DejaVu Sans for Unicode names and dashes).

Tables are laid out here rather than with fpdf2's `table()`: its cell wrapping measures
every candidate line glyph by glyph and lays each row out twice, about 5 ms a row, so a
statement with a few hundred denials and grants took seconds. Here each glyph's width is
measured once per font and size, lines are wrapped greedily (long paths break after a
`/`), and each line is placed with `text()`; a 700-row statement renders in well under
300 ms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

from fpdf import FPDF

from server.console.statement import Statement

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_HEAD_FILL = (227, 231, 236)
_RULE = (160, 168, 178)
_LINE_H = 4.2  # mm per text line at 8 pt
_PAD = 1.0  # mm inside each cell


_CORE_ENCODING = "windows-1252"  # what the built-in Helvetica can show (WinAnsiEncoding)


def _texts(s: Statement) -> Iterator[str]:
    yield from (s.client, s.client_name, s.month_label, s.zone, s.generated)
    for rows in (s.accesses, s.grants, s.denials, s.incidents, s.verification):
        for r in rows:
            yield from (v for v in (getattr(r, f.name) for f in fields(r)) if isinstance(v, str))


def _font(pdf: FPDF, s: Statement) -> str:
    """Helvetica when every text of the statement fits Windows-1252 (built into every PDF
    reader: nothing to parse or embed), else DejaVu Sans (loading and subsetting it costs
    ~150 ms a document). Helvetica also when DejaVu is not installed; see `_safe`."""
    pdf.core_fonts_encoding = _CORE_ENCODING
    try:
        "\n".join(_texts(s)).encode(_CORE_ENCODING)
    except UnicodeEncodeError:
        regular, bold = FONT_DIR / "DejaVuSans.ttf", FONT_DIR / "DejaVuSans-Bold.ttf"
        if regular.exists() and bold.exists():
            pdf.add_font("DejaVu", "", str(regular))
            pdf.add_font("DejaVu", "B", str(bold))
            return "DejaVu"
    return "Helvetica"


def _safe(text: str, family: str) -> str:
    """`text` as the font can show it (a character Helvetica lacks becomes "?")."""
    if family != "Helvetica":
        return text
    return text.encode(_CORE_ENCODING, "replace").decode(_CORE_ENCODING)


class _Measure:
    """Text widths in mm for the current font, from per-glyph and per-text caches (table
    cells repeat: technician ids, areas, actions, states)."""

    def __init__(self, pdf: FPDF) -> None:
        self._pdf = pdf
        self._glyphs: dict[tuple[str, str, float], dict[str, float]] = {}
        self._texts: dict[tuple[str, str, float, str], float] = {}

    def __call__(self, text: str) -> float:
        pdf = self._pdf
        key = (pdf.font_family, pdf.font_style, pdf.font_size_pt)
        known = self._texts.get((*key, text))
        if known is not None:
            return known
        table = self._glyphs.setdefault(key, {})
        total = 0.0
        for ch in text:
            w = table.get(ch)
            if w is None:
                w = table[ch] = pdf.get_string_width(ch)
            total += w
        if len(self._texts) < 50_000:
            self._texts[(*key, text)] = total
        return total


def _cut(word: str, width: float, measure: _Measure) -> int:
    """How many leading characters of `word` fit in `width` (at least one), preferring to
    end just after a `/` so that paths break between their parts."""
    used, fit = 0.0, 0
    for i, ch in enumerate(word):
        used += measure(ch)
        if used > width:
            break
        fit = i + 1
    fit = max(fit, 1)
    slash = word.rfind("/", 0, fit)
    return slash + 1 if 0 < slash < fit - 1 else fit


def _wrap(text: str, width: float, measure: _Measure) -> list[str]:
    """`text` broken into lines no wider than `width` (greedy, at spaces where possible)."""
    if "\n" not in text and measure(text) <= width:
        return [text]
    lines: list[str] = []
    space = measure(" ")
    for para in text.split("\n"):
        line, used = "", 0.0
        for word in para.split(" "):
            w = measure(word)
            if line and used + space + w <= width:
                line, used = f"{line} {word}", used + space + w
                continue
            if line:
                lines.append(line)
            rest = word
            while w > width and len(rest) > 1:
                cut = _cut(rest, width, measure)
                lines.append(rest[:cut])
                rest = rest[cut:]
                w = measure(rest)
            line, used = rest, w
        lines.append(line)
    return lines


def _table(
    pdf: FPDF,
    family: str,
    header: tuple[str, ...],
    rows: Sequence[Sequence[object]],
    widths: tuple[int, ...],
) -> None:
    """A ruled table with a shaded header row, repeated on every page it runs onto.

    Rules are drawn once per row and once per page (column lines), not per cell.
    """
    measure = _Measure(pdf)
    most = int((pdf.h - pdf.t_margin - pdf.b_margin) / _LINE_H) - 4  # lines a row may take
    left = pdf.l_margin
    edges = [left]
    for w in widths:
        edges.append(edges[-1] + w)
    pdf.set_draw_color(*_RULE)
    pdf.set_fill_color(*_HEAD_FILL)
    pdf.set_line_width(0.1)
    top = pdf.get_y()

    def columns(bottom: float) -> None:
        for x in edges:
            pdf.line(x, top, x, bottom)

    def row(cells: Sequence[str], head: bool) -> None:
        nonlocal top
        pdf.set_font(family, "B" if head else "", 8)
        wrapped = [
            _wrap(_safe(c, family), w - 2 * _PAD, measure)[:most]
            for c, w in zip(cells, widths, strict=True)
        ]
        height = max(len(lines) for lines in wrapped) * _LINE_H + _PAD
        if pdf.get_y() + height > pdf.page_break_trigger:
            columns(pdf.get_y())
            pdf.add_page()
            top = pdf.get_y()
            if not head:
                row(header, True)
                pdf.set_font(family, "", 8)
        y = pdf.get_y()
        if head:
            pdf.rect(left, y, edges[-1] - left, height, style="DF")
        for lines, x in zip(wrapped, edges, strict=False):
            for i, line in enumerate(lines):
                if line:
                    pdf.text(x + _PAD, y + _PAD / 2 + (i + 0.75) * _LINE_H, line)
        pdf.line(left, y + height, edges[-1], y + height)
        pdf.set_xy(left, y + height)

    row(header, True)
    for r in rows:
        row([str(c) for c in r], False)
    columns(pdf.get_y())
    pdf.ln(3)


def _heading(pdf: FPDF, family: str, text: str) -> None:
    pdf.set_font(family, "B", 12)
    pdf.cell(0, 8, _safe(text, family), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)


def _para(pdf: FPDF, family: str, text: str) -> None:
    pdf.set_font(family, size=9)
    pdf.multi_cell(0, 5, _safe(text, family), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def render(s: Statement) -> bytes:
    """The statement as PDF bytes."""
    pdf = FPDF(orientation="portrait", format="A4")
    pdf.set_title(f"Client access statement - {s.client_name} - {s.month_label}")
    pdf.set_author("Custodes")
    pdf.set_auto_page_break(auto=True, margin=14)
    family = _font(pdf, s)
    pdf.add_page()
    pdf.set_font(family, "B", 16)
    pdf.cell(
        0,
        10,
        _safe(f"Client access statement: {s.client_name}", family),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    _para(
        pdf,
        family,
        f"{s.month_label} · times in {s.zone} · generated {s.generated} · client id {s.client}",
    )
    verdict = (
        "Every stored event of this client's agents is verified against the agents' signed "
        "checkpoints."
        if s.verified
        else "Some evidence is not (yet) verified: see the verification section."
    )
    _para(
        pdf,
        family,
        f"{s.total_accesses:,} technician access(es) to sensitive areas, "
        f"{s.grants_total:,} just-in-time request(s), {s.denials_total:,} denial(s), "
        f"{s.incidents_total:,} incident(s). {verdict}",
    )

    if s.uncounted:
        _para(
            pdf,
            family,
            f"{s.uncounted:,} event(s) stored in the last moments were not counted yet; "
            "download the statement again shortly to include them.",
        )
    _heading(pdf, family, "Technician accesses to sensitive areas")
    if s.accesses:
        _table(
            pdf,
            family,
            ("Technician", "Area", "Action", "Decision", "Rule", "Count", "First", "Last"),
            [
                (
                    a.technician,
                    a.area,
                    a.action,
                    a.decision,
                    a.rule,
                    f"{a.count:,}",
                    a.first,
                    a.last,
                )
                for a in s.accesses
            ],
            (22, 30, 14, 16, 22, 14, 26, 26),
        )
    else:
        _para(pdf, family, "No technician accessed a sensitive area this month.")

    _heading(pdf, family, "Grants and the tickets behind them")
    if s.grants:
        _table(
            pdf,
            family,
            ("Request", "Technician", "Area", "Ticket", "Reason", "Window", "State", "Approved by"),
            [
                (g.id, g.technician, g.area, g.ticket, g.reason, g.window, g.state, g.approved_by)
                for g in s.grants
            ],
            (20, 20, 24, 16, 36, 30, 14, 20),
        )
        if s.grants_total > len(s.grants):
            _para(
                pdf,
                family,
                f"The newest {len(s.grants):,} of {s.grants_total:,} requests are listed; "
                "the console's Access requests page shows the rest.",
            )
    else:
        _para(pdf, family, "No just-in-time access was requested this month.")

    _heading(pdf, family, "Denied accesses")
    if s.denials:
        _table(
            pdf,
            family,
            ("When", "Technician", "Area", "Action", "Path", "Rule"),
            [(d.when, d.technician, d.area, d.action, d.path, d.rule) for d in s.denials],
            (26, 20, 22, 12, 62, 28),
        )
        if s.denials_total > len(s.denials):
            _para(
                pdf,
                family,
                f"The first {len(s.denials):,} of {s.denials_total:,} denials are listed; "
                f"{s.denials_total - len(s.denials):,} more are counted in the accesses table. "
                "Every denial of the month is in the console's events export (Events, "
                "decision deny, download CSV).",
            )
    else:
        _para(pdf, family, "No access was denied this month.")

    _heading(pdf, family, "Possible breaches")
    if s.incidents:
        _table(
            pdf,
            family,
            ("Incident", "Summary", "State", "Aware", "Assessment due"),
            [(i.label, i.summary, i.state, i.aware, i.due) for i in s.incidents],
            (22, 80, 24, 32, 32),
        )
        if s.incidents_total > len(s.incidents):
            _para(
                pdf,
                family,
                f"The first {len(s.incidents):,} of {s.incidents_total:,} incidents are listed; "
                "the breach register (console, Incidents, CSV) holds every one.",
            )
    else:
        _para(pdf, family, "No possible breach was raised this month.")

    _heading(pdf, family, "Evidence verification")
    if s.verification:
        _table(
            pdf,
            family,
            ("Agent", "Host", "Events stored", "Verified to", "Result"),
            [
                (v.agent_id, v.hostname, f"{v.stored:,}", f"{v.verified_to:,}", v.result)
                for v in s.verification
            ],
            (26, 34, 22, 22, 86),
        )
    else:
        _para(pdf, family, "No agent is enrolled for this client.")
    _para(
        pdf,
        family,
        "The evidence can be checked independently: `custodes evidence export` "
        "writes a file that `custodes evidence verify` checks offline, without trusting the "
        "MSP, and compares with each agent's own latest checkpoint.",
    )
    return bytes(pdf.output())
