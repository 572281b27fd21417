#!/usr/bin/env bash
# The one command: build the gateway and the benchmark (release), then measure every scenario
# direct and through the gateway and write bench/results/latest.{md,json,png}.
#
#   bash bench/run.sh            # full run: about 3 minutes of measuring (after the build)
#   bash bench/run.sh --quick    # about 1 minute of measuring
#
# Any other flag goes to the runner (see `--help`), e.g. --duration 3 --max-streams 2000.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# Thousands of open streams need thousands of file descriptors: raise the soft limit as far
# as the hard limit allows (the runner and the processes it starts inherit it).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "bench: building megallm-gateway and megallm-bench (release)..." >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin megallm-gateway
cargo build --release --manifest-path "$ROOT/bench/Cargo.toml" --bins

echo "bench: $(nproc) cores, shared by the load generator, the gateway and the mock upstream (nothing pinned); open-files limit $(ulimit -n)" >&2
# Results go to bench/results unless the caller names another place with --out.
out=(--out "$ROOT/bench/results")
for arg in "$@"; do
    case "$arg" in --out | --out=*) out=() ;; esac
done
exec "$CARGO_TARGET_DIR/release/megallm-bench" \
    --gateway-bin "$CARGO_TARGET_DIR/release/megallm-gateway" \
    --mock-bin "$CARGO_TARGET_DIR/release/mock-upstream" \
    "${out[@]}" \
    "$@"
