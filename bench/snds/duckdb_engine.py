#!/usr/bin/env python3
"""SNDS-bench's DuckDB side: what a researcher with a laptop would do.

  duckdb_engine.py convert --schema SCHEMA.json --delivery DIR --out DIR [--compression lz4|zstd]
      Converts every CSV file of the delivery to Parquet (the codec PDS loads
      with, LZ4 unless told otherwise) with DuckDB's
      own COPY, one directory per table. Columns are typed as `pds load`
      types them (SCHEMA.json, from `snds-bench csv-schema`), with DuckDB's
      own parsers (strptime); nothing else is changed (sentinel dates such
      as 01/01/1600 stay dates, as a DuckDB user would get them).

  duckdb_engine.py run --data DIR --queries DIR --set NAME=VALUE ... \
      [--only Q] [--runs N] [--results DIR] --out REPORT.json
      Runs the SQL files on views over the Parquet files, with as many
      threads as PDS uses, and writes the same report as `snds-bench run`.
"""

import argparse
import json
import os
import pathlib
import resource
import sys
import time

import duckdb


def threads():
    return int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))


def cast(name, kind):
    c = f'"{name}"'
    t = f"NULLIF({c}, '')"
    return {
        "string": c,
        "integer": f"CAST({t} AS BIGINT)",
        "number": f"CAST({t} AS DOUBLE)",
        "date": f"CAST(strptime({t}, '%d/%m/%Y') AS DATE)",
        "compact_date": f"CAST(strptime({t}, '%d%m%Y') AS DATE)",
        "sas_datetime": f"strptime({t}, '%d%b%Y:%H:%M:%S')",
        "year": f"CAST({t} AS INTEGER)",
        "year_month": f"CAST({t} AS INTEGER)",
        "month": f"CAST({t} AS INTEGER)",
    }[kind] + f' AS "{name}"'


def convert(args):
    schema = json.loads(pathlib.Path(args.schema).read_text())
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads()}")
    started = time.perf_counter()
    for f in schema:
        src = pathlib.Path(args.delivery) / f["file"]
        table_dir = out / f["table"]
        table_dir.mkdir(exist_ok=True)
        dst = table_dir / (pathlib.Path(f["file"]).stem + ".parquet")
        cols = ", ".join(cast(c["name"], c["kind"]) for c in f["columns"])
        t = time.perf_counter()
        con.execute(
            f"COPY (SELECT {cols} FROM read_csv('{src}', delim=';', header=true, all_varchar=true, "
            f"quote='\"')) TO '{dst}' (FORMAT parquet, COMPRESSION {args.compression})"
        )
        print(f"  {f['file']}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    json.dump({"seconds": time.perf_counter() - started}, sys.stdout)
    print()


def open_views(data, memory_mib=None, temp_dir=None):
    con = duckdb.connect()
    con.execute(f"SET threads = {threads()}")
    if memory_mib:
        # DuckDB spills what does not fit to its temporary directory.
        con.execute(f"SET memory_limit = '{memory_mib}MiB'")
    if temp_dir:
        con.execute(f"SET temp_directory = '{temp_dir}'")
    for d in sorted(pathlib.Path(data).iterdir()):
        if d.is_dir():
            con.execute(
                f"CREATE VIEW \"{d.name}\" AS SELECT * FROM read_parquet('{d}/*.parquet', union_by_name=true)"
            )
    return con


def queries(directory, sets, only):
    subst = [(f"{{{k}}}", v) for k, v in (s.split("=", 1) for s in sets)]
    out = []
    for p in sorted(pathlib.Path(directory).glob("*.sql")):
        if only and p.stem != only:
            continue
        sql = p.read_text()
        for k, v in subst:
            sql = sql.replace(k, v)
        out.append((p.stem, sql))
    if not out:
        sys.exit(f"no query to run in {directory}")
    return out


def cell(v):
    if v is None:
        return None
    return str(v)


def run(args):
    opened = time.perf_counter()
    con = open_views(args.data, args.memory_mib, args.temp_dir)
    open_s = time.perf_counter() - opened
    results = pathlib.Path(args.results) if args.results else None
    if results:
        results.mkdir(parents=True, exist_ok=True)
    report = []
    for name, sql in queries(args.queries, args.set, args.only):
        print(f"  {name}", file=sys.stderr)
        times = []
        rows = 0
        failed = None
        for i in range(args.runs + 1):
            t = time.perf_counter()
            # Every row to the client, as Arrow.
            try:
                rel = con.sql(sql)
                table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
            except duckdb.Error as e:
                if not args.memory_mib:
                    raise
                # Under a memory limit a failure is a result, as for snds-bench.
                failed = str(e)
                break
            times.append(time.perf_counter() - t)
            if i == 0:
                rows = table.num_rows
                if results and (args.results_max_rows is None or rows <= args.results_max_rows):
                    with open(results / f"{name}.jsonl", "w") as w:
                        for row in table.to_pylist():
                            w.write(json.dumps([cell(v) for v in row.values()]))
                            w.write("\n")
            del table
        if failed is not None:
            report.append({"query": name, "failed": failed})
            continue
        report.append({"query": name, "first_s": times[0], "hot_s": times[1:], "rows": rows})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    doc = {
        "engine": "duckdb",
        "version": duckdb.__version__,
        "threads": threads(),
        "open_s": open_s,
        "peak_rss_bytes": peak,
        "memory_mib": args.memory_mib,
        "queries": report,
    }
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--schema", required=True)
    c.add_argument("--delivery", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--compression", choices=["lz4", "zstd"], default="lz4")
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--queries", required=True)
    r.add_argument("--set", action="append", default=[])
    r.add_argument("--only")
    r.add_argument("--runs", type=int, default=0)
    r.add_argument("--results")
    r.add_argument("--results-max-rows", type=int, help="write rows only for results this small")
    r.add_argument("--memory-mib", type=int, help="DuckDB's memory_limit; failures are reported, not raised")
    r.add_argument("--temp-dir", help="DuckDB's temp_directory (where it spills)")
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    convert(args) if args.command == "convert" else run(args)


if __name__ == "__main__":
    main()
