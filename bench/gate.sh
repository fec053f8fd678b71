#!/usr/bin/env bash
# Gate benchmark: the same analyses through the gate (a project with the
# full perimeter: every table and column, project pseudonym mapping on,
# perimeter barrier, audit entries) and on raw DataFusion over the same
# encrypted Parquet files. Writes bench/results/<date>-gate-<N>x<years>.json.
#
#   bench/gate.sh [BENEFICIARIES] [YEARS]       # default 50000 2021-2022
#   RUNS=7 bench/gate.sh 50000 2021-2022        # runs per query and side (default 5)
#
# Each query runs once per side to warm up, then RUNS times alternating
# raw and gate; medians are compared. The machine is shared and noisy:
# quote the per-query figures with the median.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-50000}"
YEARS="${2:-2021-2022}"
RUNS="${RUNS:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p pds-cli
cargo build --release --locked -p pds-gate --example gate_bench
BIN="$CARGO_TARGET_DIR/release/pds"
WORK="${BENCH_WORK:-bench/work}/gate-$N-$YEARS"
rm -rf "$WORK"; mkdir -p "$WORK" bench/results
"$BIN" synth -q --beneficiaries "$N" --years "$YEARS" --seed 42 --out "$WORK/delivery"
"$BIN" --home "$WORK/home" init --master-key-file "$WORK/master.key" > /dev/null
"$BIN" --home "$WORK/home" load -q "$WORK/delivery"
OUT="bench/results/$(date +%F)-gate-${N}x${YEARS}.json"
"$CARGO_TARGET_DIR/release/examples/gate_bench" "$WORK/home" "$RUNS" "$OUT"
