#!/usr/bin/env bash
# Run the cargo-fuzz targets in fuzz/ one after another. Run `helper/fuzz.sh --help` for usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ_DIR="$ROOT/fuzz"
ALL_TARGETS="request_head response_head chunked request_target"
TIME=600
TARGETS=()

usage() {
    cat <<EOF
Usage: helper/fuzz.sh [--time SECONDS] [TARGET...]

Runs each cargo-fuzz target in fuzz/ for SECONDS (default 600), one at a time, with
one libFuzzer job. Targets: $ALL_TARGETS (default: all).

Each run starts from fuzz/seeds/TARGET (committed) plus fuzz/corpus/TARGET (the working
corpus, kept between runs, not committed). A crash, panic or failed invariant stops that
target; its input is saved under fuzz/artifacts/TARGET/ and the script exits non-zero
after the remaining targets have run.

Needs the nightly toolchain (cargo +nightly; not installed by this script). If cargo-fuzz
is missing it is installed first, with a message (cargo install cargo-fuzz, from
crates.io; a few minutes); nothing else is installed. CI does not run this.

Options:
  --time SECONDS   how long each target runs (default 600)
  -h, --help       this text

Reproduce a finding:  cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...
Minimize it:          cd fuzz && cargo +nightly fuzz tmin TARGET artifacts/TARGET/crash-...
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --time)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "--time needs a number of seconds" >&2; exit 2; }
            TIME=$2
            shift 2
            ;;
        --time=*)
            TIME=${1#--time=}
            [[ "$TIME" =~ ^[0-9]+$ && "$TIME" -gt 0 ]] || { echo "--time needs a number of seconds" >&2; exit 2; }
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
        *)
            if [[ " $ALL_TARGETS " != *" $1 "* ]]; then
                echo "unknown target: $1 (targets: $ALL_TARGETS)" >&2
                exit 2
            fi
            TARGETS+=("$1")
            shift
            ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || read -r -a TARGETS <<<"$ALL_TARGETS"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo-fuzz is missing: installing it (cargo install cargo-fuzz)"
    cargo install cargo-fuzz
fi

cd "$FUZZ_DIR"
echo "== building the fuzz targets"
cargo +nightly fuzz build

failed=()
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    before=$(find "artifacts/$target" -maxdepth 1 -type f ! -name '*.log' | sort)
    echo "== $target: ${TIME}s (log: fuzz/$log)"
    status=0
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$TIME" -jobs=1 -workers=1 -print_final_stats=1 >"$log" 2>&1 || status=$?
    # With -jobs, libFuzzer's one worker logs to fuzz-0.log (copied into $log at the end).
    rm -f fuzz-[0-9]*.log
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" | tail -n 2 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
    after=$(find "artifacts/$target" -maxdepth 1 -type f ! -name '*.log' | sort)
    new=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
    if [[ $status -ne 0 || -n "$new" ]]; then
        failed+=("$target")
        echo "!! $target failed (exit $status)"
        grep -E -m 5 'panicked at|^(thread|ERROR|SUMMARY)' "$log" || tail -n 20 "$log"
        for artifact in $new; do echo "!! artifact: fuzz/$artifact"; done
    else
        echo "ok $target: clean"
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== failed: ${failed[*]}"
    exit 1
fi
echo "== all clean: ${TARGETS[*]}"
