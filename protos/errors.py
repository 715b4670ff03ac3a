"""The root of every Custodes exception, so the entry module can print any of them plainly."""

from __future__ import annotations


class CustodesError(Exception):
    """Base of every component's exception tree (PolicyError, EvidenceError, AgentError, ...).

    `hint` says what to do next; the CLI prints it under the message.
    """

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class UsageError(CustodesError):
    """A command was called with arguments that do not fit together."""
