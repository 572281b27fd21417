"""The official OpenAI Python SDK against a running gateway: what a user of the SDK sees.

Usage: python openai_check.py BASE_URL   (e.g. http://127.0.0.1:8000/v1). Exits non-zero on any
mismatch, printing what differed.
"""
import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url, api_key="any-key-the-gateway-ignores", max_retries=0)

# Non-streaming, default model.
done = client.chat.completions.create(messages=[{"role": "user", "content": "hello sdk"}], model="openai-gpt-oss-120b")
assert done.choices[0].message.role == "assistant", done
assert "hello sdk" in done.choices[0].message.content, done.choices[0].message.content
assert done.usage is not None and done.usage.total_tokens > 0, done.usage
print("unary ok:", done.choices[0].message.content)

# Streaming, with usage on the last chunk.
stream = client.chat.completions.create(
    model="gpt-4",
    messages=[{"role": "user", "content": "stream sdk"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, chunks = [], None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
text = "".join(pieces)
assert chunks >= 3, chunks
assert "stream sdk" in text, text
assert finish == "stop", finish
assert usage is not None, "usage chunk missing"
print(f"stream ok: {chunks} chunks:", text)

# Models.
ids = [m.id for m in client.models.list()]
assert "openai-gpt-oss-120b" in ids, ids
assert client.models.retrieve("gpt-4").id == "gpt-4"
print("models ok:", len(ids))

# A client mistake is the SDK's BadRequestError with the parameter named.
try:
    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}], temperature=5)
    raise SystemExit("temperature=5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e.status_code
    assert e.body["param"] == "temperature", e.body
    print("bad request ok:", e.body["message"])

print("openai sdk: all checks passed")
