"""Map validation locations (pydantic `loc` tuples) back to YAML lines, columns and names."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

Loc = tuple[int | str, ...]


def position(tree: Any, loc: Loc, *, key: bool = False) -> tuple[int, int]:
    """1-based (line, col) of the node at `loc` in a ruamel round-trip tree.

    With `key`, the position of the mapping key itself (for unknown keys). A location that
    does not exist in the tree (a missing key) gives the position of its nearest parent key.
    """
    line, col = 0, 0
    node = tree
    for depth, step in enumerate(loc):
        last = depth == len(loc) - 1
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and lc is not None:
            match: Any = step if step in node else _MISSING
            if match is _MISSING and not isinstance(step, str):
                match = next((k for k in node if str(k) == str(step)), _MISSING)
            if match is _MISSING:
                break
            line, col = lc.key(match) if key and last else lc.value(match)
            if not last and isinstance(node[match], dict | list):
                # a nested block starts on the next line; its key's line reads better
                line, col = lc.key(match)
            node = node[match]
        elif isinstance(node, list) and lc is not None and isinstance(step, int):
            if not 0 <= step < len(node):
                break
            line, col = lc.item(step)
            node = node[step]
        else:
            break
    return line + 1, col + 1


_MISSING = object()


def field_path(loc: Loc) -> str:
    """`areas[2].paths[0]` for ('areas', 2, 'paths', 0); "<document>" for the top level."""
    out = ""
    for step in loc:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out or "<document>"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def allowed_keys(loc: Loc) -> list[str]:
    """The keys the schema accepts in the mapping at `loc` (empty if it is not a model)."""
    from policies.schema import Agreement  # noqa: PLC0415 - schema imports nothing from here

    model: type[BaseModel] | None = Agreement
    for step in loc:
        if model is None:
            return []
        if isinstance(step, int):
            continue
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == step), None
        )
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def unknown_key_message(loc: Loc) -> str:
    """`unknown key 'pathz'; expected one of: id, description, paths, ...`."""
    allowed = allowed_keys(loc[:-1])
    expected = f"; expected one of: {', '.join(allowed)}" if allowed else ""
    return f"unknown key {loc[-1]!r}{expected}"
