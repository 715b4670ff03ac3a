"""The generated protobuf modules match protos/custodes.proto as it is now."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from protos.wire import pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_descriptor_matches_the_proto_source(tmp_path: Path) -> None:
    out = tmp_path / "set.pb"
    rc = protoc.main(
        ["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", "protos/custodes.proto"]
    )
    assert rc == 0, "protoc could not compile protos/custodes.proto"
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    generated = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    _drop_json_names(fresh)  # protoc fills json_name in descriptor sets, not in _pb2 modules
    assert generated == fresh, "protos/custodes_pb2.py is stale: run `make protos`"


def _drop_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    pending = list(file.message_type)
    while pending:
        message = pending.pop()
        for f in message.field:
            f.ClearField("json_name")
        pending.extend(message.nested_type)
