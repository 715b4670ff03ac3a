"""The client access statement as PDF (fpdf2, DejaVu Sans for Unicode names and dashes)."""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from server.console.statement import Statement

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_HEAD = FontFace(emphasis="BOLD", fill_color=(227, 231, 236))


def _font(pdf: FPDF) -> str:
    regular, bold = FONT_DIR / "DejaVuSans.ttf", FONT_DIR / "DejaVuSans-Bold.ttf"
    if regular.exists() and bold.exists():
        pdf.add_font("DejaVu", "", str(regular))
        pdf.add_font("DejaVu", "B", str(bold))
        return "DejaVu"
    return "Helvetica"  # latin-1 only; the caller's text is made safe below


def _safe(text: str, family: str) -> str:
    if family != "Helvetica":
        return text
    return (
        text.replace("\u2013", "-")
        .replace("\u00b7", "-")
        .encode("latin-1", "replace")
        .decode("latin-1")
    )


def _table(
    pdf: FPDF,
    family: str,
    header: tuple[str, ...],
    rows: list[tuple[str, ...]],
    widths: tuple[int, ...],
) -> None:
    pdf.set_font(family, size=8)
    with pdf.table(
        col_widths=widths, headings_style=_HEAD, line_height=4.5, text_align="LEFT"
    ) as table:
        table.row([_safe(h, family) for h in header])
        for r in rows:
            table.row([_safe(str(c), family) for c in r])
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
    family = _font(pdf)
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
        f"{len(s.grants)} just-in-time request(s), {s.denials_total:,} denial(s), "
        f"{len(s.incidents)} incident(s). {verdict}",
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
    else:
        _para(pdf, family, "No just-in-time access was requested this month.")

    _heading(pdf, family, "Denied accesses")
    if s.denials:
        _table(
            pdf,
            family,
            ("When", "Technician", "Area", "Action", "Path", "Rule"),
            [(d.when, d.technician, d.area, d.action, d.path, d.rule) for d in s.denials],
            (26, 22, 26, 14, 64, 18),
        )
        if s.denials_total > len(s.denials):
            _para(pdf, family, f"The first {len(s.denials)} of {s.denials_total:,} denials.")
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
