"""The generated protobuf modules, with a clear error when they have not been generated."""

from __future__ import annotations

from protos.errors import CustodesError

try:
    from protos import custodes_pb2 as pb
    from protos import custodes_pb2_grpc as rpc
except ImportError as exc:  # pragma: no cover - only without a build step
    raise CustodesError(
        f"the generated protobuf modules are missing ({exc})",
        hint="run `make protos` (or `make venv`), which generates them from protos/custodes.proto",
    ) from exc

__all__ = ["pb", "rpc"]
