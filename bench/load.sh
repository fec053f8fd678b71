#!/usr/bin/env bash
# Load benchmark: the same synthetic delivery loaded by `pds load` (validate,
# pseudonymise, encrypt, partition, commit) and converted to Parquet by DuckDB
# (`COPY ... TO ... (FORMAT parquet)`, what a DuckDB user would do), side by
# side. Writes bench/results/<date>-load-<N>x<year>.json.
#
#   bench/load.sh [BENEFICIARIES] [YEAR]          # default 100000 2021
#   RUNS=3 bench/load.sh 100000 2021              # each side 3 times; medians
#
# The machine is shared and noisy (±5% between runs): use RUNS=3 or more for
# a ratio you want to quote, and quote the range as well as the median.
# Needs: python3 with the duckdb package (pip install duckdb).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
YEAR="${2:-2021}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Without the `sql` feature: `pds load` is the same code, and the release build
# skips DataFusion (about 40 minutes on 2 cores).
cargo build --release --locked -p pds-cli --no-default-features
BIN="$CARGO_TARGET_DIR/release/pds"
WORK="${BENCH_WORK:-bench/work}/load-$N-$YEAR"
rm -rf "$WORK"; mkdir -p "$WORK" bench/results
"$BIN" synth -q --beneficiaries "$N" --years "$YEAR" --seed 42 --out "$WORK/delivery"
RUNS="${RUNS:-1}"
for i in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/home"
  "$BIN" --home "$WORK/home" init --master-key-file "$WORK/master.key" > /dev/null
  /usr/bin/time -v "$BIN" --home "$WORK/home" load "$WORK/delivery" > "$WORK/pds.out" 2> "$WORK/pds.time.$i"
done
RESULT="bench/results/$(date -u +%Y-%m-%d)-load-${N}x${YEAR}.json"
python3 - "$WORK" "$RESULT" "$(nproc)" "$RUNS" <<'PY'
import json, os, re, sys, time, glob, resource, statistics
work, result, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import duckdb
def secs(s):
    parts = [float(x) for x in s.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
pds_runs = []
for i in range(1, runs + 1):
    t = open(os.path.join(work, f"pds.time.{i}")).read()
    grab = lambda l: re.search(re.escape(l) + r":\s*(.+)", t).group(1).strip()
    pds_runs.append((secs(grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")),
                     int(grab("Maximum resident set size (kbytes)")) / 1024))
csvs = sorted(glob.glob(os.path.join(work, "delivery", "*.csv")))
csv_bytes = sum(os.path.getsize(f) for f in csvs)
rows = sum(sum(1 for _ in open(f, "rb")) - 1 for f in csvs)
def tree_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
pds = {"seconds": statistics.median(r[0] for r in pds_runs),
       "seconds_all_runs": [r[0] for r in pds_runs],
       "peak_rss_mib": max(r[1] for r in pds_runs),
       "output_bytes": tree_size(os.path.join(work, "home", "objects"))}
out = os.path.join(work, "duckdb")
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
duck_runs = []
for run in range(runs):
  start = time.perf_counter()
  full_sniff = []
  for f in csvs:
    name = os.path.basename(f)[:-4]
    # DuckDB's defaults first (type sniffing on a sample), as a user would;
    # a file whose sample misleads the sniffer is retried with a full scan.
    try:
        con.execute(f"COPY (SELECT * FROM read_csv('{f}', delim=';', header=true)) "
                    f"TO '{out}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")
    except duckdb.Error:
        full_sniff.append(name)
        con.execute(f"COPY (SELECT * FROM read_csv('{f}', delim=';', header=true, sample_size=-1)) "
                    f"TO '{out}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")
  duck_runs.append(time.perf_counter() - start)
duck = {"seconds": statistics.median(duck_runs), "seconds_all_runs": duck_runs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "output_bytes": tree_size(out), "files_needing_full_sniff": full_sniff}
for r in (pds, duck):
    r["rows_per_s"] = rows / r["seconds"]
    r["csv_mb_per_s"] = csv_bytes / 1e6 / r["seconds"]
res = {"beneficiaries": int(os.path.basename(work).split("-")[1]), "csv_files": len(csvs), "csv_bytes": csv_bytes,
       "rows": rows, "threads": threads, "runs": runs, "duckdb_version": duckdb.__version__, "pds_load": pds, "duckdb_copy": duck,
       "ratio_pds_over_duckdb_time": pds["seconds"] / duck["seconds"],
       "note": "pds load also validates every value, pseudonymises identifiers (HMAC-SHA256), encrypts (AES-GCM) and partitions; DuckDB converts only"}
json.dump(res, open(result, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
rm -rf "$WORK"
