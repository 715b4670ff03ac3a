"""The generated protobuf modules, with a clear error when they have not been generated.

`pb` (messages) is imported at once; `rpc` (the gRPC stubs and servicers) only when first
used, because it pulls in grpc, which the agent's gate does not need until it ships.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from protos.errors import CustodesError

_MISSING_HINT = "run `make protos` (or `make venv`): it generates them from protos/custodes.proto"

try:
    from protos import custodes_pb2 as pb
except ImportError as exc:  # pragma: no cover - only without a build step
    raise CustodesError(
        f"the generated protobuf modules are missing ({exc})", hint=_MISSING_HINT
    ) from exc

if TYPE_CHECKING:
    from protos import custodes_pb2_grpc as rpc


def __getattr__(name: str) -> ModuleType:
    if name == "rpc":
        try:
            from protos import custodes_pb2_grpc  # noqa: PLC0415 - lazy on purpose (grpc)
        except ImportError as exc:  # pragma: no cover - only without a build step
            raise CustodesError(
                f"the generated gRPC module is missing ({exc})", hint=_MISSING_HINT
            ) from exc
        return custodes_pb2_grpc
    raise AttributeError(f"module 'protos.wire' has no attribute {name!r}")


__all__ = ["pb", "rpc"]
