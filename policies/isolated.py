"""Load, validate and compile an agreement in a short-lived child process.

A long-running process (the agent daemon) needs the compiled agreement all its life, but
pydantic and ruamel.yaml only while it loads one; once imported they stay resident (about
9 MB together). `compile_isolated(path)` runs `python -m policies.isolated PATH`, which
loads and validates the file exactly as `custodes policy check` does (every problem, as
`FILE:LINE:COL: field: message`), compiles it, and writes the result to its stdout: the
`CompiledAgreement` (plain data: `policies.compile`) or the problems. The caller gets the
same outcome as from `compile_agreement(load_agreement(path))` without importing either
library, except that the compiled agreement has no `agreement` model.

The answer is a pickle from the caller's own child (same interpreter, same code, same
user): it is unpickled with an allow-list of the few classes the compiled form is made
of, so a corrupted stream cannot name anything else.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from policies.compile import CompiledAgreement
from policies.errors import AgreementInvalid, PolicyError, Problem

TIMEOUT_S = 60.0  # the loader refuses a hostile file within seconds (policies.load caps)
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_OK, _INVALID, _ERROR = "ok", "invalid", "error"

_ALLOWED: dict[str, frozenset[str]] = {
    "policies.compile": frozenset(
        {"CompiledAgreement", "AreaMatch", "ScopeRule", "GrantLimit", "_Hit"}
    ),
    "policies.matcher": frozenset({"PathTrie", "_Node"}),
    "policies.model": frozenset({"Action", "Verdict"}),
    "policies.errors": frozenset({"Problem"}),
    "datetime": frozenset({"date", "time", "timedelta"}),
    "builtins": frozenset({"frozenset", "set"}),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a compiled agreement")


def compile_isolated(path: Path, *, timeout: float = TIMEOUT_S) -> CompiledAgreement:
    """Load, validate and compile the agreement at `path` in a child process.

    Raises AgreementInvalid with every problem (as `load_agreement` does), or PolicyError
    when the child could not answer (timeout, crash, garbled answer).
    """
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", "policies.isolated", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PolicyError(
            f"{path}: loading the agreement took longer than {timeout:.0f} s",
            hint="check the file with `custodes policy check`",
        ) from None
    except OSError as exc:
        raise PolicyError(f"cannot start the agreement loader ({exc})") from exc
    answer = done.stdout
    if done.returncode != 0 or not answer or len(answer) > MAX_ANSWER_BYTES:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise PolicyError(
            f"{path}: the agreement loader exited with status {done.returncode} "
            f"({' / '.join(tail) or 'no output'}); expected a compiled agreement or its problems",
            hint="run `custodes policy check` on the file for details",
        )
    try:
        kind, *rest = _Unpickler(io.BytesIO(answer)).load()
    except Exception as exc:
        raise PolicyError(f"{path}: the agreement loader's answer is unreadable ({exc})") from None
    if kind == _OK and len(rest) == 1 and isinstance(rest[0], CompiledAgreement):
        return rest[0]
    if kind == _INVALID and len(rest) == 2 and rest[0]:
        problems, hint = rest
        if all(isinstance(p, Problem) for p in problems):
            raise AgreementInvalid(list(problems), hint=str(hint))
    if kind == _ERROR and len(rest) == 2:
        raise PolicyError(str(rest[0]), hint=str(rest[1]))
    raise PolicyError(f"{path}: the agreement loader's answer is unreadable ({kind!r})")


def _child(path: str) -> int:
    """Load and compile `path`; write the pickled answer to stdout."""
    from policies.compile import compile_agreement  # noqa: PLC0415
    from policies.load import load_agreement  # noqa: PLC0415

    answer: tuple[object, ...]
    try:
        answer = (_OK, compile_agreement(load_agreement(Path(path))))
    except AgreementInvalid as exc:
        answer = (_INVALID, exc.problems, exc.hint)
    except PolicyError as exc:
        answer = (_ERROR, str(exc), exc.hint)
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m policies.isolated AGREEMENT.yaml", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[1]))
