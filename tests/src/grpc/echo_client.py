"""The gRPC client of the end-to-end tests: every call shape on one channel (one connection),
checking each answer. PORT: the server's; BIG: comma-separated sizes asked of Big."""
import os, grpc
ident = lambda b: b
ch = grpc.insecure_channel("127.0.0.1:" + os.environ["PORT"])
m = lambda kind, name: getattr(ch, kind)("/periscope.test.Echo/" + name, request_serializer=ident, response_deserializer=ident)
say = m("unary_unary", "Say")
for i in range(12):
    assert say(b"hello %d" % i) == b"hello %d" % i
futures = [say.future(b"x" * i) for i in range(20)]
assert [len(f.result()) for f in futures] == list(range(20))
for _ in range(4):
    try:
        m("unary_unary", "Lookup")(b"k")
        raise SystemExit("Lookup succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
for _ in range(2):
    try:
        m("unary_unary", "Slow")(b"z", timeout=0.05)
        raise SystemExit("Slow succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
for _ in range(3):
    assert len(list(m("unary_stream", "Stream")(b"s"))) == 5
for _ in range(3):
    assert m("stream_unary", "Collect")(iter([b"ab", b"cde", b"f"])) == b"6"
for _ in range(2):
    assert list(m("stream_stream", "Chat")(iter([b"1", b"22", b"333", b"4444"]))) == [b"1", b"22", b"333", b"4444"]
big = m("unary_unary", os.environ.get("BIG_METHOD", "Big"))
for n in [int(x) for x in os.environ.get("BIG", "").split(",") if x]:
    assert len(big(b"%d" % n)) == n
ch.close()
