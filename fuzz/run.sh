#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) each, from a scratch copy
# of its committed seed corpus (fuzz/corpus/<target>, left as it is).
# Prints one line per target; exits non-zero if any target crashed (its
# reproducer is kept under fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -uo pipefail

SECONDS_PER_TARGET="${1:-30}"
shift || true
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz || exit 1
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cd "$HERE" && cargo fuzz list)
fi

echo "building ${#TARGETS[@]} targets" >&2
cargo fuzz build >&2 || exit 1

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gateway-fuzz.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

failed=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$SCRATCH/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "$HERE/corpus/$t" ]; then
        cp -r "$HERE/corpus/$t/." "$corpus/"
    fi
    log="$SCRATCH/$t.log"
    echo "== $t (${SECONDS_PER_TARGET}s)" >&2
    start=$(date +%s)
    cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    cov=$(grep -oE '#[0-9]+.*cov: [0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+')
    if [ "$rc" -eq 0 ]; then
        status="ok"
    else
        status="CRASH (exit $rc)"
        failed=1
        mkdir -p "$HERE/artifacts/$t"
        cp "$log" "$HERE/artifacts/$t/run.log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 >&2
    fi
    line=$(printf '%-18s %-16s %5ss  execs=%-10s cov=%s' "$t" "$status" "$took" "${execs:-?}" "${cov:-?}")
    summary+=("$line")
    echo "$line" >&2
done

echo
echo "fuzz summary (${SECONDS_PER_TARGET}s per target):"
printf '%s\n' "${summary[@]}"
exit "$failed"
