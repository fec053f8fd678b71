#!/usr/bin/env bash
# The test command of README.md: every crate's unit and integration tests,
# then SNDS-bench's correctness check (small preset, cold runs, results of
# the gate, raw DataFusion and DuckDB must be equal; needs `pip install duckdb`).
# Arguments go to cargo test; PDS_SKIP_SNDS_CHECK=1 skips the check.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
if [ "${PDS_SKIP_SNDS_CHECK:-0}" != 1 ]; then
  echo "== SNDS-bench correctness check (small preset)"
  bench/snds-bench.sh --check
fi
