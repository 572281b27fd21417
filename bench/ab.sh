#!/usr/bin/env bash
# A/B of the gateway's CPU per call between two builds, alternating in one session: on this
# noisy 2-core machine, two full bench runs minutes apart differ more than most changes do, so a
# CPU claim is made with this.
#
#   bash bench/ab.sh DIR_A DIR_B [MODE...]     (env: ROUNDS=3 CONC=64 CALLS=30000 PORT=18781)
#
# DIR_A and DIR_B each hold a release `megallm-gateway` and `mock-upstream`. MODE is any of
# http, httpstream (HTTP/1.1, h2load --h1), unary, stream (gRPC ChatService over h2c); all four
# by default. For each round, mode and build: a fresh mock and gateway, CALLS/5 warm-up calls,
# then CALLS calls at CONC; the gateway's utime+stime (/proc/PID/stat) over them, per call.
# Needs h2load (Debian nghttp2-client) and python3.
set -euo pipefail
A=${1:?usage: bench/ab.sh DIR_A DIR_B [MODE...]}
B=${2:?usage: bench/ab.sh DIR_A DIR_B [MODE...]}
shift 2
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(http httpstream unary stream)
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-64}
CALLS=${CALLS:-30000}
GP=${PORT:-18781}
MP=$((GP + 1))
command -v h2load >/dev/null || { echo "needs h2load (apt-get install nghttp2-client)" >&2; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The bench's own conversation, as OpenAI JSON and as length-prefixed ChatCompletionRequest
# protobuf (model 1, messages 2 {role 1, content 2 {text 1}}, temperature 3, max_tokens 6).
python3 - "$WORK" <<'EOF'
import json, struct, sys
work = sys.argv[1]
def varint(n):
    out = b''
    while True:
        b, n = n & 0x7f, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def ld(field, data):
    return varint(field << 3 | 2) + varint(len(data)) + data
def msg(role, text):
    return ld(1, role.encode()) + ld(2, ld(1, text.encode()))
conversation = [("system", "You are a benchmark."), ("user", "Say hello to the benchmark in a few words.")]
for model, name in [("mock-model", "unary"), ("mock-8x0", "stream")]:
    m = ld(1, model.encode()) + b''.join(ld(2, msg(r, t)) for r, t in conversation)
    m += varint(3 << 3 | 1) + struct.pack('<d', 0.2) + varint(6 << 3 | 0) + varint(16)
    open(f"{work}/{name}.bin", "wb").write(b'\0' + struct.pack('>I', len(m)) + m)
for stream, name in [(False, "http"), (True, "httpstream")]:
    body = {"model": "mock-8x0" if stream else "mock-model", "stream": stream,
            "messages": [{"role": r, "content": t} for r, t in conversation],
            "temperature": 0.2, "max_tokens": 16}
    open(f"{work}/{name}.json", "w").write(json.dumps(body))
EOF

load() { # MODE N
  local url=http://127.0.0.1:$GP
  case $1 in
    http | httpstream) h2load --h1 -c "$CONC" -n "$2" -d "$WORK/$1.json" -H 'content-type: application/json' "$url/v1/chat/completions" ;;
    unary) h2load -c "$CONC" -m 1 -n "$2" -d "$WORK/unary.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$url/megallm.v1.ChatService/CreateChatCompletion" ;;
    stream) h2load -c "$CONC" -m 1 -n "$2" -d "$WORK/stream.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$url/megallm.v1.ChatService/StreamChatCompletion" ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
  esac
}

one() { # DIR MODE -> CPU µs per call
  "$1/mock-upstream" --listen "127.0.0.1:$MP" >/dev/null 2>&1 &
  local mock=$!
  RUST_LOG=warn MEGALLM_API_KEYS=k1,k2,k3,k4 "$1/megallm-gateway" --listen "127.0.0.1:$GP" \
    --upstream "http://127.0.0.1:$MP/v1" >/dev/null 2>&1 &
  local gw=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$GP/healthz" >/dev/null && break; sleep 0.1; done
  load "$2" $((CALLS / 5)) >/dev/null
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  out=$(load "$2" "$CALLS")
  t1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  kill "$gw" "$mock"
  wait "$gw" "$mock" 2>/dev/null || true
  local ok
  ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  [ "$ok" = "$CALLS" ] || echo "  ($2: $ok of $CALLS answered 2xx)" >&2
  echo $(((t1 - t0) * 10000 / CALLS))
}

for mode in "${MODES[@]}"; do
  a=() b=()
  for _ in $(seq "$ROUNDS"); do
    a+=("$(one "$A" "$mode")")
    b+=("$(one "$B" "$mode")")
  done
  echo "$mode c=$CONC: A ${a[*]} µs/call | B ${b[*]} µs/call"
done
