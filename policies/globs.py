"""Path globs of sensitive areas: validation, segments, and the literal prefix to mark.

A glob is absolute and split on "/". A segment is either literal, `**` (zero or more whole
segments), or a wildcard segment using `*` (any run of characters except "/"), `?` (one
character) and `[...]` / `[!...]` (one character of a class). Matching is case-sensitive and
`*` matches a leading dot too, so hidden files inside an area stay inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SegmentKind = Literal["literal", "wild", "dstar"]
MAX_GLOB_LENGTH = 4096
MAX_SEGMENTS = 256


@dataclass(frozen=True, slots=True)
class Segment:
    """One "/"-separated piece of a glob."""

    kind: SegmentKind
    text: str

    def regex(self) -> re.Pattern[str]:
        """The compiled full-match regex of a wildcard segment."""
        return re.compile(segment_regex(self.text), re.DOTALL)


def _class_end(text: str, start: int) -> int:
    """Index of the "]" closing the class opened at `start`, or -1 if it is unbalanced."""
    i = start + 1
    if i < len(text) and text[i] == "!":
        i += 1
    if i < len(text) and text[i] == "]":  # a leading "]" is a member, as in fnmatch
        i += 1
    while i < len(text):
        if text[i] == "]":
            return i
        i += 1
    return -1


def segment_regex(text: str) -> str:
    """Translate one wildcard segment into a regex (no anchors; use fullmatch)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            while i + 1 < len(text) and text[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = _class_end(text, i)
            if end < 0:
                raise ValueError(f"segment {text!r} has an unbalanced '['")
            body = text[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[{'^/' if negate else ''}{body}]")
            i = end
        elif ch == "]":
            raise ValueError(f"segment {text!r} has a ']' without its '['")
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _is_wild(text: str) -> bool:
    return any(c in text for c in "*?[]")


def parse_glob(glob: str) -> tuple[Segment, ...]:
    """Split and check an absolute glob; raise ValueError saying what is wrong."""
    if not glob:
        raise ValueError("empty path glob; expected an absolute glob such as '/srv/data/**'")
    if len(glob) > MAX_GLOB_LENGTH:
        raise ValueError(f"path glob is {len(glob)} characters; expected at most {MAX_GLOB_LENGTH}")
    if not glob.startswith("/"):
        raise ValueError(f"{glob!r} is relative; expected an absolute glob starting with '/'")
    if "\x00" in glob or "\n" in glob:
        raise ValueError(f"{glob!r} contains a NUL or newline; expected a plain path")
    if glob == "/":
        raise ValueError("'/' would make the whole machine one area; expected a directory")
    parts = glob[1:].split("/")
    if len(parts) > MAX_SEGMENTS:
        raise ValueError(f"{glob!r} has {len(parts)} segments; expected at most {MAX_SEGMENTS}")
    segments: list[Segment] = []
    for part in parts:
        if part == "":
            raise ValueError(f"{glob!r} has an empty segment ('//' or a trailing '/')")
        if part in (".", ".."):
            raise ValueError(f"{glob!r} has a '{part}' segment; expected a normalised path")
        if part == "**":
            if segments and segments[-1].kind == "dstar":
                raise ValueError(f"{glob!r} repeats '**/**'; one '**' already spans any depth")
            segments.append(Segment("dstar", part))
        elif "**" in part:
            raise ValueError(f"{glob!r}: '**' must be a whole segment, not part of {part!r}")
        elif _is_wild(part):
            try:
                re.compile(segment_regex(part))
            except re.error as exc:
                raise ValueError(
                    f"{glob!r}: segment {part!r} is not a valid glob ({exc})"
                ) from None
            segments.append(Segment("wild", part))
        else:
            segments.append(Segment("literal", part))
    if len(segments) == 1 and segments[0].kind == "literal":
        raise ValueError(f"{glob!r} is a top-level entry; its directory to mark would be '/'")
    if segments[0].kind != "literal":
        raise ValueError(
            f"{glob!r} starts with a wildcard; expected a literal top directory such as /srv"
        )
    return tuple(segments)


def literal_root(segments: tuple[Segment, ...]) -> str:
    """The directory to mark for a glob: its literal segments before the first wildcard.

    A fully literal glob names one file or directory: its parent directory is returned,
    which holds it (the gate marks directories).
    """
    literal: list[str] = []
    for seg in segments:
        if seg.kind != "literal":
            break
        literal.append(seg.text)
    if len(literal) == len(segments):
        literal = literal[:-1]
    return "/" + "/".join(literal)


def specificity(segments: tuple[Segment, ...]) -> tuple[int, int, int]:
    """Rank overlapping globs: more literal segments, then more segments, then no `**`."""
    literals = sum(1 for s in segments if s.kind == "literal")
    dstars = sum(1 for s in segments if s.kind == "dstar")
    return (literals, len(segments), -dstars)
