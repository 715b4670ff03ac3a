"""The Custodes wire contract (custodes.v1) and the evidence code both sides share.

`custodes_pb2` and `custodes_pb2_grpc` are generated from `custodes.proto` at build time
(`make protos`); they are not in git. Import them through `protos.wire`, which says what to
do when they are missing.
"""
