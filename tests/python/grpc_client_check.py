#!/usr/bin/env python3
"""Interoperability check of the gRPC door with a client nobody here wrote: Python grpcio.

Generates Python stubs from proto/megallm/v1/chat.proto into a temporary directory (grpcio-tools),
then calls a running gateway in demo mode (`megallm-gateway --demo --listen ADDR`):
unary, streaming, ListModels, grpc.health.v1, and one INVALID_ARGUMENT. Exits non-zero on the
first mismatch, saying what differed.

    python tests/python/grpc_client_check.py 127.0.0.1:8000
"""

import importlib
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(REPO, "proto")
PROTO = "megallm/v1/chat.proto"
DEFAULT_MODEL = "openai-gpt-oss-120b"
SERVICE = "megallm.v1.ChatService"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def expect(condition, message):
    if not condition:
        fail(message)


def generate_stubs(out_dir):
    """Compiles chat.proto with grpcio-tools' bundled protoc (it carries google/protobuf/*)."""
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        fail("grpc_tools.protoc could not compile " + PROTO)
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("megallm.v1.chat_pb2")
    stubs = importlib.import_module("megallm.v1.chat_pb2_grpc")
    return pb, stubs


def hello(pb, **fields):
    return pb.ChatCompletionRequest(
        messages=[pb.Message(role="user", content=[pb.ContentPart(text="Hello")])], **fields
    )


def main():
    if len(sys.argv) != 2:
        fail("usage: grpc_client_check.py HOST:PORT")
    address = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="megallm-stubs-") as out_dir:
        pb, stubs = generate_stubs(out_dir)
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=20)
        chat = stubs.ChatServiceStub(channel)

        # Unary, with our request id echoed in the initial metadata.
        reply, call = chat.CreateChatCompletion.with_call(
            hello(pb), metadata=[("x-request-id", "py-check-1")], timeout=20
        )
        expect(reply.object == "chat.completion", f"unary object is {reply.object!r}")
        expect(reply.model == DEFAULT_MODEL, f"unary model is {reply.model!r}, want the default")
        expect(len(reply.choices) == 1, f"unary has {len(reply.choices)} choices")
        choice = reply.choices[0]
        expect(choice.message.role == "assistant", f"role is {choice.message.role!r}")
        expect(choice.message.HasField("content") and "Hello" in choice.message.content,
               f"unary content {choice.message.content!r} does not echo the prompt")
        expect(choice.finish_reason == pb.FINISH_REASON_STOP, f"finish_reason {choice.finish_reason}")
        expect(reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0,
               f"usage {reply.usage}")
        initial = dict(call.initial_metadata())
        expect(initial.get("x-request-id") == "py-check-1", f"x-request-id not echoed: {initial}")
        expect(initial.get("x-gateway-attempts", "").endswith(":200"), f"x-gateway-attempts: {initial}")
        trailing = dict(call.trailing_metadata())
        expect(trailing.get("x-gateway-attempts") == initial["x-gateway-attempts"],
               f"unary trailers lack the attempt trail: {trailing}")

        # Streaming: several chunks, one completion id, text equal to the unary answer's,
        # a finish reason on the last choice, usage on the final chunk, OK with trailers.
        stream = chat.StreamChatCompletion(
            hello(pb, stream_options=pb.StreamOptions(include_usage=True)), timeout=20
        )
        chunks = list(stream)
        expect(stream.code() == grpc.StatusCode.OK, f"stream ended with {stream.code()}")
        expect(len(chunks) >= 3, f"only {len(chunks)} chunks")
        expect(len({c.id for c in chunks}) == 1, "chunks carry different ids")
        expect(all(c.object == "chat.completion.chunk" for c in chunks), "a chunk is not a chat.completion.chunk")
        text = "".join(ch.delta.content for c in chunks for ch in c.choices)
        expect(text == choice.message.content, f"streamed text {text!r} != unary {choice.message.content!r}")
        expect(chunks[0].choices[0].delta.role == "assistant", "first delta has no role")
        reasons = [ch.finish_reason for c in chunks for ch in c.choices]
        expect(reasons[-1] == pb.FINISH_REASON_STOP and set(reasons[:-1]) == {pb.FINISH_REASON_UNSPECIFIED},
               f"finish reasons {reasons}")
        expect(chunks[-1].HasField("usage") and chunks[-1].usage.total_tokens > 0, "no usage on the final chunk")
        expect(not any(c.HasField("usage") for c in chunks[:-1]), "usage before the final chunk")
        trailers = dict(stream.trailing_metadata())
        expect("x-gateway-attempts" in trailers, f"no x-gateway-attempts trailer: {trailers}")

        # ListModels.
        models = chat.ListModels(pb.ListModelsRequest(), timeout=20)
        ids = [m.id for m in models.data]
        expect(DEFAULT_MODEL in ids, f"ListModels lacks {DEFAULT_MODEL}: {ids}")

        # Health.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=20).status
            expect(status == health_pb2.HealthCheckResponse.SERVING, f"health({service!r}) = {status}")

        # A bad field: INVALID_ARGUMENT, with google.rpc details attached.
        try:
            chat.CreateChatCompletion(hello(pb, temperature=3.0), timeout=20)
            fail("temperature=3 was accepted")
        except grpc.RpcError as error:
            expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"temperature=3 gave {error.code()}")
            expect("temperature" in error.details(), f"message does not name the field: {error.details()!r}")
            keys = [k for k, _ in error.trailing_metadata()]
            expect("grpc-status-details-bin" in keys, f"no status details: {keys}")

        channel.close()
    print(f"OK: Python grpcio {grpc.__version__} against {address}: unary, streaming ({len(chunks)} chunks), "
          f"ListModels ({len(ids)} models), health, INVALID_ARGUMENT")


if __name__ == "__main__":
    main()
