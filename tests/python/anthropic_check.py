"""The official Anthropic Python SDK against the gateway's /v1/messages (demo mode), unary
and streaming, and embeddings through the official OpenAI SDK. Argument: the gateway's base
URL without /v1 (http://127.0.0.1:PORT)."""

import sys

import anthropic
import openai

base = sys.argv[1]

client = anthropic.Anthropic(base_url=base, api_key="any-token", max_retries=0)
message = client.messages.create(
    model="openai-gpt-oss-120b",
    max_tokens=64,
    messages=[{"role": "user", "content": "ping from the anthropic sdk"}],
)
assert message.type == "message", message
text = "".join(block.text for block in message.content if block.type == "text")
assert "ping from the anthropic sdk" in text, text
print("anthropic unary:", text)

pieces = []
with client.messages.stream(
    model="openai-gpt-oss-120b",
    max_tokens=64,
    messages=[{"role": "user", "content": "stream please"}],
) as stream:
    for delta in stream.text_stream:
        pieces.append(delta)
    final = stream.get_final_message()
assert len(pieces) > 1, pieces
assert "stream please" in "".join(pieces), pieces
assert final.stop_reason == "end_turn", final
print("anthropic stream:", len(pieces), "deltas")

oai = openai.OpenAI(base_url=base + "/v1", api_key="any-token", max_retries=0)
emb = oai.embeddings.create(model="openai-gpt-oss-120b", input=["one", "two"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0, emb
print("openai embeddings:", len(emb.data), "vectors of", len(emb.data[0].embedding))
