#!/usr/bin/env python3
"""Pilot: what an integer patient surrogate would give DataFusion on SNDS-bench.

PDS stores patient identifiers (BEN_NIR_PSA, NIR_ANO_17, BEN_IDT_ANO) as the
strings of the delivery. docs/performance.md ("What would close the gap")
locates the queries that fall short of DuckDB in reading and hashing those
strings. This pilot measures, before PDS builds it, what storing a dense
64-bit number instead would change, on the same analyses and data:

1. From the DuckDB files of a prepared SNDS-bench work directory (made by
   bench/snds/bench.py), it numbers every distinct identifier of each
   pseudonymisation domain (one domain for BEN_NIR_PSA and NIR_ANO_17, which
   queries compare with each other; one for BEN_IDT_ANO) and writes copies of
   the tables these queries read with the identifiers replaced by their
   numbers (DuckDB `COPY`, LZ4, row order kept: the same writer and codec as
   the string files).
2. It runs q05, q09 and q06 of bench/snds/queries unchanged on both layouts,
   except that q06's patient key `BEN_NIR_PSA || BEN_RNG_GEM` becomes
   `BEN_NIR_PSA * 256 + BEN_RNG_GEM` on numbers (the pair the gate would key
   on), with DataFusion (the `datafusion` Python package, the same major
   version as PDS's engine) and DuckDB, 2 threads each.
3. It checks that every engine and layout gives the same answer, and prints
   (with --report, writes) the medians.

These are DuckDB's unencrypted files, not PDS's snapshot (no encryption, no
clustering, no gate): the figure of interest is the ratio between the two
layouts within one engine.

    pip install "datafusion==55.*" duckdb
    python3 bench/snds/pilot_surrogate.py --work bench/work/snds-1000000x2022 --report
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUERIES = ROOT / "bench" / "snds" / "queries"
QUERY_NAMES = ["q05_ald_prevalence", "q09_stroke_mortality", "q06_gp_consultations"]
# Identifier columns per table, and the domain each belongs to.
IDENTIFIERS = {
    "IR_BEN_R": {"BEN_NIR_PSA": "nir", "BEN_IDT_ANO": "idt"},
    "T_MCO{yy}C": {"NIR_ANO_17": "nir"},
    "KI_CCI_R": {"BEN_IDT_ANO": "idt"},
    "IR_IMB_R": {"BEN_NIR_PSA": "nir"},
    "ER_PRS_F": {"BEN_NIR_PSA": "nir"},
    "T_MCO{yy}B": {},
}
PATIENT_KEY = "COUNT(DISTINCT p.BEN_NIR_PSA || p.BEN_RNG_GEM)"
PATIENT_KEY_INT = "COUNT(DISTINCT p.BEN_NIR_PSA * 256 + p.BEN_RNG_GEM)"


def fail(msg: str) -> None:
    print(f"pilot_surrogate: {msg}", file=sys.stderr)
    sys.exit(2)


def source(duck: pathlib.Path, table: str) -> str:
    d = duck / table
    if not d.is_dir():
        fail(f"{d} is missing: prepare the work directory first (bench/snds/bench.py --preset ...)")
    return f"read_parquet('{d}/*.parquet')"


def build(duck: pathlib.Path, out: pathlib.Path, yy: str) -> float:
    """Writes the numbered copies, unless each exists and is newer than the
    DuckDB files it was made from (a re-prepared work directory is numbered
    again). Returns seconds."""
    import duckdb

    tables = [t.replace("{yy}", yy) for t in IDENTIFIERS]

    def fresh(t: str) -> bool:
        copy = out / f"{t}.parquet"
        return copy.exists() and copy.stat().st_mtime > max(
            f.stat().st_mtime for f in (duck / t).glob("*.parquet"))

    if all((duck / t).is_dir() and fresh(t) for t in tables):
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads=2; SET preserve_insertion_order=true")
    for t in tables:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM {source(duck, t)}")
    for domain in ("nir", "idt"):
        parts = [
            f"SELECT {c} AS id FROM {t.replace('{yy}', yy)}"
            for t, cols in IDENTIFIERS.items()
            for c, d in cols.items()
            if d == domain
        ]
        con.execute(
            f"CREATE TABLE dict_{domain} AS SELECT id, row_number() OVER (ORDER BY id) AS n "
            f"FROM ({' UNION '.join(parts)}) WHERE id IS NOT NULL"
        )
    for t, cols in IDENTIFIERS.items():
        t = t.replace("{yy}", yy)
        names = [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall()]
        select, joins = [], []
        for i, c in enumerate(names):
            if c in cols:
                joins.append(f"LEFT JOIN dict_{cols[c]} d{i} ON d{i}.id = s.{c}")
                select.append(f"d{i}.n AS {c}")
            else:
                select.append(f"s.{c}")
        tmp = out / f"{t}.parquet.tmp"
        con.execute(
            f"COPY (SELECT {', '.join(select)} FROM (SELECT *, row_number() OVER () AS pilot_row FROM {t}) s "
            f"{' '.join(joins)} ORDER BY s.pilot_row) TO '{tmp}' (FORMAT parquet, COMPRESSION lz4)"
        )
        tmp.rename(out / f"{t}.parquet")
    return time.perf_counter() - t0


def machine() -> str:
    """Cores, memory and CPU model, for the report."""
    model, mem = platform.machine(), ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kib = next(int(x.split()[1]) for x in pathlib.Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal"))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} cores{mem}, {model}"


def canonical(rows: list[tuple]) -> list[tuple]:
    """Rows in a comparable form: sorted, floats rounded."""
    return sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=pathlib.Path, required=True, help="a prepared SNDS-bench work directory")
    ap.add_argument("--year", default="2022")
    ap.add_argument("--runs", type=int, default=7, help="hot runs per query (after one warm-up run)")
    ap.add_argument("--out", type=pathlib.Path, help="where the numbered copies go (default <work>/pilot-surrogate)")
    ap.add_argument("--report", action="store_true", help="write bench/results/<date>-pilot-surrogate-<scale>.md and .json")
    a = ap.parse_args()
    try:
        import datafusion
        import duckdb
    except ImportError as e:
        fail(f"{e.name} is missing: pip install 'datafusion==55.*' duckdb")
    if not datafusion.__version__.startswith("55."):
        print(f"note: datafusion {datafusion.__version__}; PDS runs DataFusion 55", file=sys.stderr)
    if a.runs < 1:
        fail("--runs must be at least 1")
    yy = a.year[-2:]
    duck = a.work / "duckdb"
    out = a.out or a.work / "pilot-surrogate"
    built = build(duck, out, yy)
    tables = [t.replace("{yy}", yy) for t in IDENTIFIERS]
    subst = {"yy": yy, "year": a.year, "next": str(int(a.year) + 1)}

    def text(name: str) -> str:
        s = (QUERIES / f"{name}.sql").read_text()
        for k, v in subst.items():
            s = s.replace("{" + k + "}", v)
        return s

    layouts = {
        "strings": {t: f"{duck / t}/*.parquet" for t in tables},
        "integers": {t: str(out / f"{t}.parquet") for t in tables},
    }
    rows, answers = [], {}
    for name in QUERY_NAMES:
        for layout, files in layouts.items():
            sql = text(name)
            if layout == "integers" and PATIENT_KEY in sql:
                sql = sql.replace(PATIENT_KEY, PATIENT_KEY_INT)
            cfg = (
                datafusion.SessionConfig()
                .with_target_partitions(2)
                .set("datafusion.sql_parser.enable_ident_normalization", "false")
            )
            ctx = datafusion.SessionContext(cfg)
            con = duckdb.connect()
            con.execute("SET threads=2")
            for t, f in files.items():
                ctx.register_parquet(f'"{t}"', f.removesuffix("*.parquet") if f.endswith("/*.parquet") else f)
                con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{f}')")
            run = {
                "datafusion": lambda: [tuple(r.values()) for r in ctx.sql(sql).to_pylist()],
                "duckdb": lambda: con.execute(sql).fetchall(),
            }
            for engine, f in run.items():
                times, result = [], None
                for _ in range(a.runs + 1):
                    t0 = time.perf_counter()
                    result = f()
                    times.append(time.perf_counter() - t0)
                answers[(name, engine, layout)] = canonical(result)
                rows.append(
                    {"query": name, "engine": engine, "layout": layout,
                     "median_s": statistics.median(times[1:]), "rows": len(result)}
                )
                print(f"  {name:<24} {engine:<10} {layout:<8} {rows[-1]['median_s']:.3f} s", flush=True)
    for name in QUERY_NAMES:
        first = answers[(name, "duckdb", "strings")]
        for k, v in answers.items():
            if k[0] == name and v != first:
                fail(f"{name}: {k[1]} on {k[2]} gave a different answer from DuckDB on strings")
    print("every engine and layout returned the same answers")

    def med(q, e, l):
        return next(r["median_s"] for r in rows if (r["query"], r["engine"], r["layout"]) == (q, e, l))

    lines = [
        "| query | DataFusion strings (s) | DataFusion integers (s) | gain | DuckDB strings (s) | DuckDB integers (s) | DataFusion integers / DuckDB strings |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in QUERY_NAMES:
        ds, di, ks, ki = (med(q, "datafusion", "strings"), med(q, "datafusion", "integers"),
                          med(q, "duckdb", "strings"), med(q, "duckdb", "integers"))
        lines.append(f"| {q} | {ds:.3f} | {di:.3f} | {ds / di:.2f}× | {ks:.3f} | {ki:.3f} | {di / ks:.2f} |")
    print("\n".join(lines))
    if a.report:
        scale = a.work.name.removeprefix("snds-")
        stem = ROOT / "bench" / "results" / f"{datetime.date.today()}-pilot-surrogate-{scale}"
        meta = (f"Machine: {machine()}; 2 threads per engine. DataFusion {datafusion.__version__} "
                f"(Python package), DuckDB {duckdb.__version__}. DuckDB's LZ4 files of `{a.work}` and their "
                f"numbered copies (built in {built:.0f} s; 0 = reused). Median of {a.runs} hot runs after one "
                "warm-up; answers checked equal across engines and layouts.")
        stem.with_suffix(".md").write_text(
            f"# Pilot: integer patient surrogate, {scale}\n\n{meta}\n\n"
            "Command: `python3 bench/snds/pilot_surrogate.py --work "
            f"{a.work} --runs {a.runs} --report`. See `docs/performance.md`, What would close the gap.\n\n"
            + "\n".join(lines) + "\n"
        )
        stem.with_suffix(".json").write_text(json.dumps(
            {"datafusion": datafusion.__version__, "duckdb": duckdb.__version__, "runs": a.runs,
             "results": rows}, indent=1) + "\n")
        print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
