#!/usr/bin/env bash
# Serving benchmark (pds serve, release build):
#  1. 100 concurrent PostgreSQL-protocol clients (pgbench) for 60 s running a
#     mix of catalogue and small aggregate queries (and, apart, one heavy
#     aggregate over the 10 M claim lines with 4 clients): p50/p99 latency, throughput,
#     server memory (RSS sampled every second, and the peak);
#  2. a Flight SQL bulk transfer of a 10-million-row result (ADBC + pyarrow)
#     against pyarrow reading the same rows from local Parquet files.
# Writes bench/results/<date>-serve-<N>.json.
#
#   bench/serve.sh [BENEFICIARIES]     # default 380000 (about 10.3 M claim lines, one year)
#   CLIENTS=100 SECONDS_=60 RUNS=3 bench/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-380000}"
CLIENTS="${CLIENTS:-100}"
DURATION="${SECONDS_:-60}"
RUNS="${RUNS:-3}"
ROWS="${ROWS:-10000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p pds-cli
BIN="$CARGO_TARGET_DIR/release/pds"
WORK="${BENCH_WORK:-bench/work}/serve-$N"
rm -rf "$WORK"; mkdir -p "$WORK" bench/results
export PDS_USER=steward
echo "== data: $N beneficiaries, 2022 (CSV for PDS, the same rows as Parquet for pyarrow)"
"$BIN" synth -q --beneficiaries "$N" --years 2022 --seed 42 --out "$WORK/delivery"
"$BIN" synth -q --beneficiaries "$N" --years 2022 --seed 42 --format parquet --out "$WORK/parquet"
"$BIN" --home "$WORK/home" init --master-key-file "$WORK/master.key" > /dev/null
"$BIN" --home "$WORK/home" load -q "$WORK/delivery"
cat > "$WORK/perimeter.toml" <<'TOML'
years = [2022, 2022]
[tables]
IR_BEN_R = ["BEN_NIR_PSA", "BEN_SEX_COD", "BEN_NAI_ANN"]
ER_PRS_F = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF", "PRS_ACT_QTE", "PRS_PAI_MNT"]
TOML
"$BIN" --home "$WORK/home" project create p-bench --title bench --authorisation bench \
  --expires 2099-12-31 --perimeter "$WORK/perimeter.toml" > /dev/null
"$BIN" --home "$WORK/home" project grant p-bench bench > /dev/null
# A service account: its scoped token is the password of every client.
"$BIN" --home "$WORK/home" user add bench --service > /dev/null
PW=$("$BIN" --home "$WORK/home" user token bench --project p-bench --role researcher --days 1 2>/dev/null)
"$BIN" --home "$WORK/home" tls self-signed > /dev/null
"$BIN" --home "$WORK/home" serve --pg-listen 127.0.0.1:0 --flight-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --ready-file "$WORK/ready.json" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -f "$WORK/ready.json" ] && break; sleep 0.2; done
PG=$(python3 -c "import json;print(json.load(open('$WORK/ready.json'))['pg'])")
FLIGHT=$(python3 -c "import json;print(json.load(open('$WORK/ready.json'))['flight'])")
CONN="host=${PG%:*} port=${PG##*:} dbname=p-bench user=bench sslmode=require"

echo "== $CLIENTS pgwire clients for $DURATION s"
( while kill -0 $SERVER 2>/dev/null; do grep VmRSS /proc/$SERVER/status | awk '{print $2}'; sleep 1; done ) > "$WORK/rss.txt" &
SAMPLER=$!
( cd "$WORK" && PGPASSWORD="$PW" pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" -l --log-prefix=pgb \
    -f "$OLDPWD/bench/serve/catalog.sql@2" -f "$OLDPWD/bench/serve/small_agg.sql@2" \
    -f "$OLDPWD/bench/serve/ben_agg.sql@1" "$CONN" ) > "$WORK/pgbench.txt" 2>&1
kill $SAMPLER 2>/dev/null || true
cat "$WORK/pgbench.txt" | grep -E "tps|latency|transactions|failed" || true
PCT=$(python3 bench/serve/percentiles.py "$WORK/pgb")
PEAK=$(grep VmHWM /proc/$SERVER/status | awk '{print $2}')

echo "== one heavy aggregate (10 M claim lines, filter + group by), 4 clients for 20 s"
( cd "$WORK" && PGPASSWORD="$PW" pgbench -n -c 4 -j 2 -T 20 -f "$OLDPWD/bench/serve/claims_agg.sql" "$CONN" ) > "$WORK/pgbench_heavy.txt" 2>&1
grep -E "tps|latency average" "$WORK/pgbench_heavy.txt" || true

echo "== Flight SQL bulk transfer of $ROWS rows (median of $RUNS) vs pyarrow on local Parquet"
FL=$(python3 bench/serve/flight_bulk.py "grpc+tls://$FLIGHT" p-bench bench "$PW" "$WORK/parquet" "$ROWS" "$RUNS")
echo "$FL"
OUT="bench/results/$(date +%F)-serve-$N.json"
python3 - "$OUT" "$WORK" "$PCT" "$PEAK" "$FL" "$CLIENTS" "$DURATION" <<'PY'
import json, sys, re
out, work, pct, peak, fl, clients, duration = sys.argv[1:8]
pg = open(f"{work}/pgbench.txt").read()
tps = re.search(r"tps = ([0-9.]+)", pg)
failed = re.search(r"number of failed transactions: (\d+)", pg)
rss = [int(x) for x in open(f"{work}/rss.txt").read().split() if x.strip().isdigit()]
res = {
  "machine": "2 cores, 24 GiB; server and clients on the same host",
  "pgwire": {"clients": int(clients), "seconds": int(duration), "mix": "catalogue 2 : aggregate on IR_BEN_R by sex 2 : by decade of birth and sex 1",
             "throughput_tps": float(tps.group(1)) if tps else None,
             "failed": int(failed.group(1)) if failed else None, **json.loads(pct),
             "server_rss_mib_max_sampled": round(max(rss) / 1024, 1) if rss else None,
             "server_rss_mib_peak": round(int(peak) / 1024, 1)},
  "heavy_aggregate": {"clients": 4, "seconds": 20, "sql": open("bench/serve/claims_agg.sql").read().strip(),
                      "throughput_tps": float(re.search(r"tps = ([0-9.]+)", open(f"{work}/pgbench_heavy.txt").read()).group(1)),
                      "latency_avg_ms": float(re.search(r"latency average = ([0-9.]+)", open(f"{work}/pgbench_heavy.txt").read()).group(1))},
  "flight_sql_bulk": json.loads(fl),
  "note": "gate limit: 4 statements at once ([gate] max_concurrent_statements); every statement appends two signed audit entries (SQLite) before and after its rows",
}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
kill -TERM $SERVER; wait $SERVER || true
echo "written: $OUT"
