#!/usr/bin/env bash
# Disclosure-control benchmark: the same aggregate analyses in a row-level
# project and in an aggregate-only project with the same perimeter (every
# published value also counts its distinct patients; suppression, margins,
# query-set tracker). Writes bench/results/<date>-disclosure-<N>x<years>.json.
#
#   bench/disclosure.sh [BENEFICIARIES] [YEARS]     # default 100000 2022
#   RUNS=7 bench/disclosure.sh                      # runs per query and side (default 5)
#
# The goal (issue 7): under 30% on the median query.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
YEARS="${2:-2022}"
RUNS="${RUNS:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# One build of both binaries: building the example of one crate alone would
# unify features differently and rebuild DataFusion.
cargo build --release --locked -p pds-cli -p pds-bench
BIN="$CARGO_TARGET_DIR/release/pds"
WORK="${BENCH_WORK:-bench/work}/disclosure-$N-$YEARS"
rm -rf "$WORK"; mkdir -p "$WORK" bench/results
"$BIN" synth -q --beneficiaries "$N" --years "$YEARS" --seed 42 --out "$WORK/delivery"
"$BIN" --home "$WORK/home" init --master-key-file "$WORK/master.key" > /dev/null
"$BIN" --home "$WORK/home" load -q "$WORK/delivery"
OUT="bench/results/$(date +%F)-disclosure-${N}x${YEARS}.json"
"$CARGO_TARGET_DIR/release/snds-bench" disclosure "$WORK/home" "$RUNS" "$OUT"
