"""Flight SQL bulk transfer through `pds serve` against pyarrow reading the
same rows from local Parquet. Prints one JSON object.

Usage: flight_bulk.py URI PROJECT USER PASSWORD PARQUET_DIR ROWS RUNS
"""
import glob
import json
import statistics
import sys
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow.parquet as pq

uri, project, user, password, parquet_dir, rows, runs = sys.argv[1:8]
rows, runs = int(rows), int(runs)
columns = ["BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_NAT_REF", "PRS_ACT_QTE", "PRS_PAI_MNT"]
sql = "SELECT " + ", ".join(f'"{c}"' for c in columns) + f' FROM "ER_PRS_F" LIMIT {rows}'

conn = flight_sql.connect(uri, db_kwargs={
    "username": user, "password": password,
    "adbc.flight.sql.client_option.tls_skip_verify": "true",
    "adbc.flight.sql.rpc.call_header.x-pds-project": project,
})
flight = []
for _ in range(runs):
    t = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    flight.append((time.perf_counter() - t, table.num_rows, table.nbytes))
conn.close()

files = sorted(glob.glob(f"{parquet_dir}/**/ER_PRS_F*.parquet", recursive=True)) or sorted(glob.glob(f"{parquet_dir}/ER_PRS_F*"))
local = []
for _ in range(runs):
    t = time.perf_counter()
    n, b = 0, 0
    for f in files:
        part = pq.read_table(f, columns=columns)
        n += part.num_rows
        b += part.nbytes
        if n >= rows:
            break
    local.append((time.perf_counter() - t, min(n, rows), b))

def summary(runs_):
    secs = statistics.median(r[0] for r in runs_)
    n = runs_[0][1]
    mb = runs_[0][2] / 1e6
    return {"seconds_median": round(secs, 3), "rows": n, "arrow_mb": round(mb, 1),
            "rows_per_s": round(n / secs), "mb_per_s": round(mb / secs, 1),
            "seconds_all": [round(r[0], 3) for r in runs_]}

print(json.dumps({"sql": sql, "flight_sql": summary(flight), "local_parquet_pyarrow": summary(local),
                  "parquet_files": len(files)}))
