"""A path-component trie over absolute globs: one walk per path, never a scan of patterns.

Literal segments are dict lookups; wildcard segments are tried only at nodes that have
them; `**` (zero or more whole segments) is a node tried at each remaining depth, with a
short cut for a trailing `**`, the common "everything below here" case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from policies.globs import Segment, segment_regex

T = TypeVar("T")


def _fullmatch(text: str) -> Callable[[str], object]:
    return re.compile(segment_regex(text), re.DOTALL).fullmatch


class _Node(Generic[T]):
    __slots__ = ("dstar", "leaf", "literal", "terminal", "wild", "wild_index")

    def __init__(self) -> None:
        self.literal: dict[str, _Node[T]] = {}
        self.wild: list[tuple[Callable[[str], object], _Node[T]]] = []
        self.wild_index: dict[str, _Node[T]] = {}
        self.dstar: _Node[T] | None = None
        self.terminal: list[T] = []
        self.leaf = True  # no children: a `**` node that is a leaf matches any rest

    def __getstate__(self) -> tuple[object, ...]:
        # The compiled regexes are rebuilt from `wild_index` (same order) when unpickled,
        # so the pickled form holds only strings, lists, dicts and nodes.
        return (self.literal, self.wild_index, self.dstar, self.terminal, self.leaf)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.literal, self.wild_index, self.dstar, self.terminal, self.leaf = state
        self.wild = [(_fullmatch(text), child) for text, child in self.wild_index.items()]


class PathTrie(Generic[T]):
    """Globs (as parsed segments) with a payload each; `match` returns every payload hit."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, segments: tuple[Segment, ...], payload: T) -> None:
        """Insert one glob; its payload is returned by `match` for each path it matches."""
        node = self._root
        for seg in segments:
            node.leaf = False
            if seg.kind == "literal":
                node = node.literal.setdefault(seg.text, _Node())
            elif seg.kind == "wild":
                child = node.wild_index.get(seg.text)
                if child is None:
                    child = _Node()
                    node.wild_index[seg.text] = child
                    node.wild.append((_fullmatch(seg.text), child))
                node = child
            else:
                if node.dstar is None:
                    node.dstar = _Node()
                node = node.dstar
        node.terminal.append(payload)
        self._size += 1

    def match(self, segments: list[str]) -> list[T]:
        """Payloads of every glob matching the path split into `segments` (may repeat)."""
        return self.match_in_dir(segments)[0]

    def match_in_dir(self, segments: list[str]) -> tuple[list[T], bool]:
        """`match`, and whether every name in the same directory gets the same payloads.

        The last segment (the file's name) matters only where a node reached with it still
        to be consumed has literal or wildcard children; otherwise (no children there, or
        only a trailing `**`) any other name in that directory matches alike.
        """
        out: list[T] = []
        n = len(segments)
        last = n - 1
        by_dir = n > 0
        stack: list[tuple[_Node[T], int]] = []
        seen: set[tuple[int, int]] | None = None
        node = self._root
        i = 0
        while True:
            if i == last and (node.literal or node.wild):
                by_dir = False
            ds = node.dstar
            if ds is not None:
                if ds.leaf:
                    out.extend(ds.terminal)
                else:
                    if seen is None:
                        seen = set()
                    key = id(ds)
                    for j in range(i, n + 1):
                        if (key, j) not in seen:
                            seen.add((key, j))
                            stack.append((ds, j))
            if i == n:
                if node.terminal:
                    out.extend(node.terminal)
            else:
                seg = segments[i]
                if node.wild:
                    for fullmatch, wchild in node.wild:
                        if fullmatch(seg) is not None:
                            stack.append((wchild, i + 1))
                child = node.literal.get(seg)
                if child is not None:
                    node = child
                    i += 1
                    continue
            if not stack:
                return out, by_dir
            node, i = stack.pop()
