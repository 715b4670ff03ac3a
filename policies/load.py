"""Read an agreement file strictly: bounded, no anchors, positions kept, every problem found.

The pipeline: size cap → UTF-8 → a streaming scan of YAML events (refuses anchors, aliases,
explicit tags, duplicate keys and deep nesting before anything is built) → ruamel.yaml
round-trip load (which keeps line and column of every node) → plain Python data → pydantic
validation plus the cross-checks of `policies.checks`. Pydantic's error locations are mapped
back to the YAML nodes, so each problem reads `FILE:LINE:COL: field.path: message`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.scalarbool import ScalarBoolean

from policies.checks import cross_check
from policies.errors import AgreementInvalid, Problem
from policies.positions import Loc, field_path, position, unknown_key_message
from policies.schema import Agreement

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
# The pure-Python YAML reader costs ~0.1 ms a node here: cap the nodes so that a large
# hostile file is refused in seconds. 3x a generated 5,000-pattern agreement (20k nodes).
MAX_EVENTS = 60_000
MAX_PROBLEMS = 500  # a file with more is not a near miss; the rest add nothing
DOCUMENT = "<document>"


def load_agreement(path: Path) -> Agreement:
    """Read and validate the agreement at `path`; raise AgreementInvalid listing every problem."""
    name = str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise AgreementInvalid(
            [Problem(name, 1, 1, DOCUMENT, f"cannot read the file ({exc.strerror or exc})")],
            hint="check the path and its permissions",
        ) from None
    return parse_agreement(data, filename=name)


def parse_agreement(text: str | bytes, *, filename: str) -> Agreement:
    """Validate agreement source text; raise AgreementInvalid listing every problem."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)

    def refuse(
        message: str, line: int = 1, col: int = 1, field: str = DOCUMENT
    ) -> AgreementInvalid:
        return AgreementInvalid([Problem(filename, line, col, field, message)])

    if len(raw) > MAX_BYTES:
        raise refuse(f"file is over {MAX_BYTES} bytes; expected an agreement of at most 1 MiB")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise refuse(f"byte {exc.start} is not UTF-8; expected UTF-8 text", line) from None
    source = source.removeprefix("\ufeff")
    if "\x00" in source:
        line = source[: source.index("\x00")].count("\n") + 1
        raise refuse("file contains a NUL byte; expected YAML text", line)

    yaml = YAML(typ="rt", pure=True)
    try:
        problem = _scan(yaml.parse(source))
        if problem is not None:
            line, col, loc, message = problem
            raise refuse(message, line, col, field_path(loc))
        tree = yaml.load(source)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise refuse(f"not valid YAML: {message}", line, col) from None
    except (YAMLError, RecursionError, ValueError) as exc:
        raise refuse(f"not valid YAML: {exc}") from None

    if tree is None:
        raise refuse("file is empty; expected a mapping with client, areas, technicians, ...")
    if not isinstance(tree, dict):
        raise refuse(f"top level is a {_yaml_type(tree)}; expected a mapping of agreement keys")

    plain = _plain(tree)
    problems: list[Problem] = []
    agreement: Agreement | None = None
    try:
        agreement = Agreement.model_validate(plain, context={"sha256": digest})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, tree, filename))
    for loc, message in cross_check(plain):
        line, col = position(tree, loc)
        problems.append(Problem(filename, line, col, field_path(loc), message))
    if problems or agreement is None:
        problems.sort(key=lambda p: (p.line, p.col, p.field))
        raise AgreementInvalid(_capped(_unique(problems), filename))
    return agreement


def _capped(problems: list[Problem], filename: str) -> list[Problem]:
    """Every problem up to MAX_PROBLEMS; past that, one line saying how many more."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    last = problems[MAX_PROBLEMS]
    more = Problem(filename, last.line, last.col, DOCUMENT, f"{rest} more problems not shown")
    return [*problems[:MAX_PROBLEMS], more]


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _scan(events: Iterable[Event]) -> tuple[int, int, Loc, str] | None:
    """Check the event stream before anything is built; return the first refusal, if any.

    Anchors and aliases are refused outright: agreements have no use for them, and an
    alias bomb is the classic way to make a YAML reader expand a tiny file without bound.
    """
    # Each frame: [is_mapping, path, next index or pending key, keys seen, expecting_key]
    stack: list[list[Any]] = []
    documents = 0

    def next_loc() -> Loc:
        if not stack:
            return ()
        frame = stack[-1]
        return (*frame[1], frame[2])

    def finished_node() -> None:
        if not stack:
            return
        frame = stack[-1]
        if frame[0]:
            frame[4] = True
        else:
            frame[2] += 1

    for count, event in enumerate(events):
        mark = event.start_mark
        if count >= MAX_EVENTS:
            return (
                mark.line + 1 if mark is not None else 1,
                1,
                (),
                f"more than {MAX_EVENTS} YAML nodes; expected an agreement a person can review",
            )
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor):
            return line, col, next_loc(), "YAML anchors and aliases are refused; write values out"
        tag = getattr(event, "tag", None)
        if isinstance(event, NodeEvent) and tag:
            return line, col, next_loc(), f"explicit YAML tag {tag!r} is refused"
        if isinstance(event, MappingStartEvent | SequenceStartEvent) and stack:
            frame = stack[-1]
            if frame[0] and frame[4]:
                return line, col, frame[1], "complex mapping keys are refused; expected names"
        if isinstance(event, ScalarEvent):
            if stack and stack[-1][0] and stack[-1][4]:
                frame = stack[-1]
                key = event.value
                if key in frame[3]:
                    return (
                        line,
                        col,
                        (*frame[1], key),
                        f"duplicate key {key!r}; expected each key once in a mapping",
                    )
                frame[3].add(key)
                frame[2] = key
                frame[4] = False
            else:
                finished_node()
        elif isinstance(event, CollectionStartEvent):
            path = next_loc()
            if len(stack) >= MAX_DEPTH:
                return (
                    line,
                    col,
                    path,
                    f"nesting is deeper than {MAX_DEPTH}; expected a flat agreement",
                )
            is_map = isinstance(event, MappingStartEvent)
            stack.append([is_map, path, None if is_map else 0, set(), True])
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            stack.pop()
            finished_node()
        elif type(event).__name__ == "DocumentStartEvent":
            documents += 1
            if documents > 1:
                return line, col, (), "more than one YAML document; expected one agreement per file"
    return None


def _plain(node: Any) -> Any:
    """ruamel's round-trip objects as plain Python values, so strict validation sees types."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, ScalarBoolean):
        return bool(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime):
        return datetime.fromisoformat(node.isoformat())
    if isinstance(node, date):
        return date(node.year, node.month, node.day)
    return str(node)


def _yaml_type(node: Any) -> str:
    for kind, name in _TYPE_NAMES:
        if isinstance(node, kind):
            return name
    return type(node).__name__


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (dict, "mapping"),
    (list, "list"),
    (datetime, "timestamp"),
    (date, "date"),
    (type(None), "null"),
)


def _pydantic_problems(exc: ValidationError, tree: Any, filename: str) -> list[Problem]:
    problems = []
    errors = exc.errors(include_url=False)
    deeper = {tuple(e["loc"][:i]) for e in errors for i in range(len(e["loc"]))}
    for err in errors:
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "too_short" and loc in deeper:
            continue  # a list whose items were all refused: the items' problems say why
        if kind == "extra_forbidden":
            message = unknown_key_message(loc)
            line, col = position(tree, loc, key=True)
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if kind in ("literal_error", "enum"):
                expected = err.get("ctx", {}).get("expected", "")
                message = f"{_short(err.get('input'))} is not allowed here; expected {expected}"
            elif kind == "missing":
                message = f"missing required key {loc[-1]!r}"
            elif "input" in err and kind.endswith("_type"):
                message += f" (got {_yaml_type(err['input'])} {_short(err['input'])})"
            line, col = position(tree, loc)
        problems.append(Problem(filename, line, col, field_path(loc), message))
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
