#!/usr/bin/env bash
# SNDS-bench: the research analyses of bench/snds/queries on PDS through the
# gate, on raw DataFusion and on DuckDB, side by side, results checked equal.
#
#   bench/snds-bench.sh                       # standard: 1 000 000 beneficiaries × 2022, 5 hot runs, report
#   bench/snds-bench.sh --preset small        # 100 000 × 2022 (large: 3 000 000 × 2021-2022)
#   bench/snds-bench.sh --check               # small preset, cold runs only, debug build: the CI correctness check
#   bench/snds-bench.sh --preset standard --runs 7 --only q01_atc_users_year_sex_age
#   bench/snds-bench.sh --preset large --memory-mib 4096   # memory mode: every engine under 4 GiB
#
# Needs python3 with duckdb (pip install duckdb). Writes
# bench/results/<date>-snds-<N>x<years>.json and .md (not with --check;
# memory mode: <date>-snds-memory-<N>x<years>).
# See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
python3 -c "import duckdb" 2>/dev/null || {
  echo "SNDS-bench needs DuckDB's Python package: python3 -m pip install duckdb" >&2; exit 2; }
if [ "${1:-}" = "--check" ]; then
  shift
  cargo build --locked -p pds-cli -p pds-bench
  # Fresh data every time: the check covers synth and load too.
  work="${BENCH_WORK:-$CARGO_TARGET_DIR/snds-bench-check}"
  rm -rf "$work"
  exec python3 bench/snds/bench.py --bin-dir "$CARGO_TARGET_DIR/debug" --preset small --runs 0 \
    --work "$work" "$@"
fi
cargo build --release --locked -p pds-cli -p pds-bench
args=("$@")
[[ " $* " == *" --preset "* ]] || args=(--preset standard "${args[@]}")
exec python3 bench/snds/bench.py --bin-dir "$CARGO_TARGET_DIR/release" --report "${args[@]}"
