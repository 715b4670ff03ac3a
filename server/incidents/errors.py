"""The incidents component's exception tree."""

from __future__ import annotations

from protos.errors import CustodesError


class IncidentError(CustodesError):
    """Root of the incidents component's errors."""


class TransitionError(IncidentError):
    """A step of the assessment that the incident's state does not allow."""


class AssessmentInputError(IncidentError):
    """An assessment step with missing or malformed input (no reasons, unknown factor...)."""


class IncidentNotFoundError(IncidentError):
    """No incident has the id asked for."""
