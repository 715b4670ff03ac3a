"""The trie matcher agrees with a naive reference matcher on random globs and paths."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.globs import parse_glob
from policies.matcher import PathTrie

ALPHABET = "ab."


def ref_segment(pattern: str, name: str) -> bool:
    """fnmatch-like, written independently: *, ?, [..] and [!..] within one segment."""
    if not pattern:
        return not name
    head = pattern[0]
    if head == "*":
        return any(ref_segment(pattern[1:], name[i:]) for i in range(len(name) + 1))
    if not name:
        return False
    if head == "?":
        return ref_segment(pattern[1:], name[1:])
    if head == "[":
        close = pattern.index("]", 2 if pattern[1:2] == "!" else 1)
        members = pattern[1:close]
        negate = members.startswith("!")
        members = members.removeprefix("!")
        hit = name[0] in members
        return hit != negate and ref_segment(pattern[close + 1 :], name[1:])
    return head == name[0] and ref_segment(pattern[1:], name[1:])


def ref_match(glob: str, path: str) -> bool:
    """A recursive reference: `**` spans zero or more whole segments."""
    pats = glob[1:].split("/")
    segs = path[1:].split("/") if path != "/" else []

    def go(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(segs)
        if pats[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and ref_segment(pats[i], segs[j]) and go(i + 1, j + 1)

    return go(0, 0)


literal = st.text(ALPHABET, min_size=1, max_size=3).filter(lambda s: s not in (".", ".."))
wild_piece = st.sampled_from(["*", "?", "[ab]", "[!a]", "a", "b", "."])
wild = (
    st.lists(wild_piece, min_size=1, max_size=3)
    .map("".join)
    .filter(lambda s: "**" not in s and s not in (".", ".."))
)
segment = st.one_of(literal, literal, wild, st.just("**"))


@st.composite
def globs(draw: st.DrawFn) -> str:
    first = draw(literal)
    rest = draw(st.lists(segment, min_size=1, max_size=4))
    out: list[str] = [first]
    for seg in rest:
        if seg == "**" and out[-1] == "**":
            continue
        out.append(seg)
    return "/" + "/".join(out)


paths = st.lists(literal, min_size=0, max_size=6).map(lambda segs: "/" + "/".join(segs))


@settings(max_examples=400, deadline=None)
@given(st.lists(globs(), min_size=1, max_size=12), st.lists(paths, min_size=1, max_size=12))
def test_trie_agrees_with_reference(patterns: list[str], candidates: list[str]) -> None:
    trie: PathTrie[int] = PathTrie()
    for index, glob in enumerate(patterns):
        trie.add(parse_glob(glob), index)
    for path in candidates:
        segs = path[1:].split("/") if path != "/" else []
        expected = {i for i, g in enumerate(patterns) if ref_match(g, path)}
        assert set(trie.match(segs)) == expected, (patterns, path)


OTHER_NAMES = ("a", "b", ".", "ab", "b.a", ".b", "aa.b", "zz")


@settings(max_examples=400, deadline=None)
@given(st.lists(globs(), min_size=1, max_size=12), st.lists(paths, min_size=1, max_size=12))
def test_match_in_dir_says_truly_when_the_name_does_not_matter(
    patterns: list[str], candidates: list[str]
) -> None:
    trie: PathTrie[int] = PathTrie()
    for index, glob in enumerate(patterns):
        trie.add(parse_glob(glob), index)
    for path in candidates:
        segs = path[1:].split("/") if path != "/" else []
        hits, same_in_dir = trie.match_in_dir(segs)
        expected = {i for i, g in enumerate(patterns) if ref_match(g, path)}
        assert set(hits) == expected, (patterns, path)
        if same_in_dir:
            parent = "/".join(["", *segs[:-1]])
            for name in OTHER_NAMES:
                other = {i for i, g in enumerate(patterns) if ref_match(g, f"{parent}/{name}")}
                assert other == expected, (patterns, path, name)


def test_nested_dstars_on_a_deep_path_stay_bounded() -> None:
    glob = "/a/**/a/**/a/**/a/**/b"
    trie: PathTrie[int] = PathTrie()
    trie.add(parse_glob(glob), 1)
    deep = ["a"] * 200
    assert trie.match(deep) == []
    assert set(trie.match([*deep, "b"])) == {1}
    assert ref_match(glob, "/" + "/".join(["a"] * 8 + ["b"]))
