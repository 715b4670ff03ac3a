"""Custodes service agreements: the schema, the strict loader, the compiler and the decision.

Modules: `schema` (pydantic models), `load` (YAML with positions; every problem at once),
`checks` (cross-references), `globs` and `matcher` (the path trie), `compile`
(`CompiledAgreement`: plain data, no pydantic), `isolated` (load and compile in a child
process, for long-running processes that should never import pydantic or ruamel.yaml),
`decide` (`decide`, `normalise_path`), `durations`, `errors`, `cli`.

Semantics worth knowing:

* Globs are absolute; `*`, `?`, `[...]` stay within one segment (and match dotfiles);
  `**` spans zero or more whole segments, so `/srv/docs/**` covers `/srv/docs` itself.
* Where two areas' globs match a path, the most specific glob wins (more literal segments,
  then more segments, then fewer `**`), then the area listed first; an area's `exclude`
  takes a path out of that area only.
* A grant is honoured only as far as the agreement lets it be granted: a just-in-time
  grant needs a `just_in_time` rule for that technician, area and action and no longer
  than its `max_duration`; a break-glass grant needs `break_glass.allowed` and its areas,
  actions and `max_duration` (a minute's grace for clock rounding). So a stale or wrong
  grant never widens the agreement.
* A principal whose exe pin does not match is treated as any other user (`others`).
"""
