"""Latency percentiles from pgbench per-transaction logs (-l). Prints JSON.
Usage: percentiles.py LOG_PREFIX"""
import glob
import json
import sys

lat = []
for f in glob.glob(sys.argv[1] + "*"):
    for line in open(f):
        parts = line.split()
        # client_id transaction_no time script_no time_epoch time_us
        if len(parts) >= 3 and parts[2].isdigit():
            lat.append(int(parts[2]) / 1000.0)
lat.sort()
def pct(p):
    return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2) if lat else None
print(json.dumps({"transactions": len(lat), "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": lat[-1] if lat else None}))
