#!/usr/bin/env bash
# Benchmark of `pds synth`: rows/s and MB/s per table family, wall time and
# peak memory. Builds the release binary, runs one generation under
# /usr/bin/time, and writes bench/results/<date>-synth-<N>x<years>.json.
#
#   bench/synth.sh [BENEFICIARIES] [YEARS] [THREADS]
#   bench/synth.sh 1000000 2021          # the reference run: 1 M x 1 year
#
# Results are a file, never an assertion: CI does not run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
YEARS="${2:-2021}"
THREADS="${3:-$(nproc)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p pds-cli
BIN="$CARGO_TARGET_DIR/release/pds"
WORK="${BENCH_WORK:-bench/work}"
OUT="$WORK/synth-$N-$YEARS"
rm -rf "$OUT"; mkdir -p "$WORK" bench/results
STATS="$WORK/stats.json"; TIMES="$WORK/time.txt"
/usr/bin/time -v "$BIN" synth --beneficiaries "$N" --years "$YEARS" --seed 42 --threads "$THREADS" \
  --out "$OUT" --stats-json "$STATS" 2> "$TIMES"
RESULT="bench/results/$(date -u +%Y-%m-%d)-synth-${N}x${YEARS}.json"
python3 - "$STATS" "$TIMES" "$RESULT" <<'PY'
import json, sys, re, platform, os
stats = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read()
def grab(label):
    m = re.search(re.escape(label) + r":\s*(.+)", t)
    return m.group(1).strip() if m else None
stats["peak_rss_mib"] = int(grab("Maximum resident set size (kbytes)")) / 1024
stats["cpu_percent"] = grab("Percent of CPU this job got")
stats["machine"] = {"cores": os.cpu_count(), "kernel": platform.release()}
json.dump(stats, open(sys.argv[3], "w"), indent=2)
print(f"wrote {sys.argv[3]}")
print(f"{stats['beneficiaries']} beneficiaries x {stats['years']}: {stats['seconds']:.1f} s, "
      f"peak RSS {stats['peak_rss_mib']:.0f} MiB, CPU {stats['cpu_percent']}")
print(f"{'family':<15}{'rows':>14}{'MB':>10}{'rows/s':>14}{'MB/s':>9}")
for f in stats["families"]:
    print(f"{f['family']:<15}{f['rows']:>14}{f['bytes']/1e6:>10.1f}{f['rows_per_s']:>14.0f}{f['mb_per_s']:>9.1f}")
PY
rm -rf "$OUT"
