#!/usr/bin/env bash
# The soak (tests/soak.rs) against a release build of the gateway:
#
#   soak/run.sh [SECONDS]     (default 600: ten minutes)
#
# Mixed load on 127.0.0.1 for SECONDS, a reload every minute, revocations
# by `gateway sessions revoke` every few seconds; then every revoked token
# is checked again and memory and descriptors must come back to baseline
# within a minute. Prints one `soak:` line with the figures; exits non-zero
# on any violation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS="${1:-600}"
cargo build --release --bin gateway
GATEWAY_BIN="$PWD/target/release/gateway" SOAK_SECS="$SECS" \
    cargo test --test soak -- --ignored --nocapture
