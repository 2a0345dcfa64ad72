"""A client in another language reads kvnode's errors with its standard
status library (grpcio-status): the details are a google.rpc.Status with a
kv.ErrorDetail packed inside. Run by kvnode's operators test:

    standard-errors.py PROTO_DIR LEADER_CLIENT_ADDR FOLLOWER_CLIENT_ADDR
"""

import os
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc

proto_dir, leader, follower = sys.argv[1:4]
out = tempfile.mkdtemp()
if protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                f"--grpc_python_out={out}", os.path.join(proto_dir, "kv.proto")]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)
import kv_pb2  # noqa: E402
import kv_pb2_grpc  # noqa: E402


def detail_of(error):
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0], (status.code, error.code())
    for packed in status.details:
        if packed.Is(kv_pb2.ErrorDetail.DESCRIPTOR):
            detail = kv_pb2.ErrorDetail()
            packed.Unpack(detail)
            return detail
    raise AssertionError(f"no kv.ErrorDetail among {status.details}")


stub = kv_pb2_grpc.KvStub(grpc.insecure_channel(leader))
try:
    stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
    sys.exit("a write without a header was accepted")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    detail = detail_of(error)
    assert detail.kind == kv_pb2.ErrorDetail.INVALID_ARGUMENT, detail
    assert "client_id" in detail.message, detail

# A read needs no header.
stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=5)

header = kv_pb2.RequestHeader(client_id=0x5EED, seq=1)
follower_stub = kv_pb2_grpc.KvStub(grpc.insecure_channel(follower))
try:
    follower_stub.Put(kv_pb2.PutRequest(header=header, key=b"k", value=b"v"), timeout=5)
    sys.exit("a write at a follower was accepted")
except grpc.RpcError as error:
    detail = detail_of(error)
    assert detail.kind == kv_pb2.ErrorDetail.NOT_LEADER, detail
    assert detail.leader_client_addr == leader, (detail, leader)
print("python: standard status details read")
