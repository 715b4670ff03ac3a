"""The policy component's exceptions: an agreement that does not load, with every problem."""

from __future__ import annotations

from dataclasses import dataclass

from protos.errors import CustodesError


class PolicyError(CustodesError):
    """Root of every error raised by `policies`."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an agreement, at a 1-based line and column of its file."""

    file: str
    line: int
    col: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.field}: {self.message}"


class AgreementInvalid(PolicyError):  # noqa: N818 - the name other components code against
    """An agreement file was refused; `problems` lists everything wrong with it, in order."""

    def __init__(self, problems: list[Problem], *, hint: str = "") -> None:
        if not problems:
            raise ValueError("AgreementInvalid needs at least one problem")
        self.problems = list(problems)
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            hint=hint or "fix every line above, then run `custodes policy check FILE`",
        )
