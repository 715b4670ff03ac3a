"""The origin lines of the two kinds of log, written once for agent and server alike.

A checkpoint's origin binds its signature to one log: an agent's own chain, or the server's
Merkle log over what it stored of that agent. The agent never imports the server, so both
formats live here.
"""

from __future__ import annotations

AGENT_PREFIX = "custodes.agent/"
SERVER_PREFIX = "custodes.server/"


def agent_origin(client: str, agent_id: str) -> str:
    """The origin of an agent's own checkpoints: `custodes.agent/{client}/{agent_id}`."""
    return f"{AGENT_PREFIX}{client}/{agent_id}"


def server_log_origin(agent_id: str) -> str:
    """The origin of the server's checkpoints over one agent's log: `custodes.server/{id}`."""
    return f"{SERVER_PREFIX}{agent_id}"
