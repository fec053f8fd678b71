#!/usr/bin/env python3
"""SNDS-bench: PDS (through the gate), raw DataFusion and DuckDB, side by side.

Run by bench/snds-bench.sh, which builds the binaries first. Steps:

1. `pds synth` writes a synthetic delivery (CSV, CNAM dialect) at the scale;
2. `pds load` loads it (validated, pseudonymised, encrypted Parquet), and
   DuckDB converts the same CSV files to Parquet with its own COPY;
3. every query of bench/snds/queries runs unchanged on each engine: a cold
   run in a fresh process (its peak resident memory is the query's), then
   one process for the hot runs;
4. the results of every engine must match DuckDB's (numbers to 1e-7
   relative, dates whatever their type, rows in any order); a mismatch fails
   the run;
5. with --report, bench/results/<date>-<scale>.json and .md are written.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUERIES = ROOT / "bench" / "snds" / "queries"
DUCKDB = ROOT / "bench" / "snds" / "duckdb_engine.py"
# Parquet codec of both engines' files: `pds load`'s default (load.compression).
CODEC = "lz4"
PRESETS = {
    "small": (100_000, "2022"),
    "standard": (1_000_000, "2022"),
    "large": (3_000_000, "2021-2022"),
}
ENGINES = ["duckdb", "datafusion", "gate"]


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    say("  $ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def timed(cmd, **kw):
    t = time.perf_counter()
    sh(cmd, **kw)
    return time.perf_counter() - t


def placeholders(years):
    parts = [int(y) for y in years.split("-")]
    last = parts[-1]
    return {
        "year": str(last),
        "next": str(last + 1),
        "prev": str(last - 1),
        "yy": f"{last % 100:02d}",
    }


# ---- results: normalise, then compare -------------------------------------------------

DATE_MIDNIGHT = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ]00:00:00(\.0+)?$")
NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def norm(cell):
    """A cell as (kind, value): numbers as floats, dates without midnight."""
    if cell is None:
        return ("null", "")
    m = DATE_MIDNIGHT.match(cell)
    if m:
        return ("text", m.group(1))
    if NUMBER.match(cell):
        return ("num", float(cell))
    return ("text", cell)


def sort_key(row):
    # Whole numbers exactly (codes, counts); other numbers rounded to 6
    # significant digits, so that summation-order noise does not change the
    # order of rows.
    def key(k, v):
        if k != "num":
            return (k, 0.0, v)
        if v.is_integer():
            return (k, v, "")
        return (k, float(f"{v:.6g}"), "")
    return tuple(key(k, v) for k, v in row)


def load_rows(path, ignore=()):
    rows = []
    with open(path) as f:
        for line in f:
            cells = json.loads(line)
            rows.append([norm(c) for i, c in enumerate(cells) if i not in ignore])
    rows.sort(key=sort_key)
    return rows


def same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "num":
        x, y = a[1], b[1]
        return x == y or abs(x - y) <= 1e-7 * max(abs(x), abs(y), 1e-9)
    return a[1] == b[1]


def ignored_columns(sql):
    """Columns a query says differ by design (`-- bench: ignore-columns 1,2`):
    patient identifiers are pseudonymised by PDS and by the gate."""
    m = re.search(r"--\s*bench:\s*ignore-columns\s+([\d,\s]+)", sql)
    return {int(i) - 1 for i in m.group(1).replace(" ", "").split(",") if i} if m else set()


def compare(work, query, engine, results=None):
    if results is not None:
        a, b = results[engine][query], results["duckdb"][query]
        if "failed" in a or "failed" in b:
            return None  # reported as a failure, not as a difference
        if a["rows"] != b["rows"]:
            return f"{a['rows']} rows, DuckDB {b['rows']}"
        if a["rows"] > MEMORY_RESULTS_MAX_ROWS:
            return None  # compared by count only
    sql = (QUERIES / f"{query}.sql").read_text()
    ignore = ignored_columns(sql)
    want = load_rows(work / "results" / "duckdb" / f"{query}.jsonl", ignore)
    got = load_rows(work / "results" / engine / f"{query}.jsonl", ignore)
    if len(want) != len(got):
        return f"{len(got)} rows, DuckDB {len(want)}"
    for i, (r, s) in enumerate(zip(got, want)):
        if len(r) != len(s) or not all(same(a, b) for a, b in zip(r, s)):
            return f"row {i + 1} (sorted): {[v for _, v in r]} but DuckDB {[v for _, v in s]}"
    return None


# ---- running ---------------------------------------------------------------------------

# Under --memory-mib, results larger than this are compared by row count
# (writing and sorting tens of millions of rows as JSON would measure the
# harness, not the engines).
MEMORY_RESULTS_MAX_ROWS = 1_000_000


def engine_cmd(engine, args, work, sets):
    if engine == "duckdb":
        cmd = [sys.executable, DUCKDB, "run", "--data", work / "duckdb", "--queries", QUERIES]
        if args.memory_mib:
            cmd += ["--temp-dir", work / "duckdb-spill"]
    else:
        cmd = [args.bin_dir / "snds-bench", "run", "--home", work / "home",
               "--engine", engine, "--queries", QUERIES]
    if args.memory_mib:
        cmd += ["--memory-mib", str(args.memory_mib), "--results-max-rows", str(MEMORY_RESULTS_MAX_ROWS)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def run_engine(engine, args, work, sets, names):
    out = {}
    base = engine_cmd(engine, args, work, sets)
    say(f"== {engine}: cold runs (one fresh process per query)")
    for q in names:
        rep = work / "reports" / f"{engine}-{q}-cold.json"
        sh(base + ["--only", q, "--runs", "0", "--results", work / "results" / engine, "--out", rep])
        doc = json.loads(rep.read_text())
        r = doc["queries"][0]
        if "failed" in r:
            say(f"  {engine} {q}: FAILED: {r['failed']}")
            out[q] = {"failed": r["failed"], "peak_rss_bytes": doc["peak_rss_bytes"]}
            continue
        out[q] = {"cold_s": r["first_s"], "peak_rss_bytes": doc["peak_rss_bytes"], "rows": r["rows"]}
        if doc.get("spilled_bytes") is not None:
            out[q]["spilled_bytes"] = doc["spilled_bytes"]
        if r.get("rerun_sort_merge"):
            out[q]["rerun_sort_merge"] = True
    if args.runs > 0:
        say(f"== {engine}: {args.runs} hot runs per query (one process, after one warm-up run)")
        rep = work / "reports" / f"{engine}-hot.json"
        sh(base + ["--runs", str(args.runs), "--out", rep])
        doc = json.loads(rep.read_text())
        for q in doc["queries"]:
            out[q["query"]]["hot_s"] = q["hot_s"]
            out[q["query"]]["median_s"] = statistics.median(q["hot_s"])
    return out


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def machine():
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "os": platform.platform()}


def markdown(doc):
    lines = [
        f"# SNDS-bench {doc['date']}: {doc['scale']['beneficiaries']:,} beneficiaries × {doc['scale']['years']}",
        "",
        f"Machine: {doc['machine']['cores']} cores, {doc['machine']['memory']}, {doc['machine']['cpu']}. "
        f"DuckDB {doc['duckdb_version']} ({doc['threads']} threads). "
        f"Parquet codec of both engines' files: {doc.get('parquet_codec', 'zstd')}. Median of {doc['runs']} hot runs; "
        "cold = first run in a fresh process (OS file cache warm); memory = peak resident set of that process.",
        "",
        "| query | rows | PDS gate (s) | DataFusion (s) | DuckDB (s) | PDS/DuckDB | PDS/DataFusion | cold PDS / DuckDB (s) | peak MiB PDS / DuckDB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for q in doc["queries"]:
        e = q["engines"]
        g, d, k = e["gate"], e["datafusion"], e["duckdb"]
        lines.append(
            f"| {q['query']} | {g['rows']} | {g.get('median_s', float('nan')):.3f} | {d.get('median_s', float('nan')):.3f} "
            f"| {k.get('median_s', float('nan')):.3f} | {q.get('pds_over_duckdb', float('nan')):.2f} "
            f"| {q.get('pds_over_datafusion', float('nan')):.2f} | {g['cold_s']:.2f} / {k['cold_s']:.2f} "
            f"| {g['peak_rss_bytes'] / 2**20:.0f} / {k['peak_rss_bytes'] / 2**20:.0f} |"
        )
    s = doc["summary"]
    lines += [
        "",
        f"Geometric mean PDS/DuckDB: **{s['geomean_pds_over_duckdb']:.2f}** (goal ≤ 1.0), worst "
        f"{s['worst_query']} at {s['worst_pds_over_duckdb']:.2f} (goal ≤ 1.5); PDS/DataFusion "
        f"{s['geomean_pds_over_datafusion']:.2f}.",
        "",
        f"Preparation: synth {doc['prepare']['synth_s']:.0f} s, `pds load` {doc['prepare']['pds_load_s']:.0f} s, "
        f"DuckDB CSV→Parquet {doc['prepare']['duckdb_convert_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--beneficiaries", type=int, help="overrides the preset")
    ap.add_argument("--years", help="overrides the preset, e.g. 2022 or 2021-2022")
    ap.add_argument("--runs", type=int, default=5, help="hot runs per query (0: cold runs only)")
    ap.add_argument("--bin-dir", type=pathlib.Path, required=True, help="where pds and snds-bench are")
    ap.add_argument("--work", type=pathlib.Path, help="work directory (default bench/work/snds-N-YEARS)")
    ap.add_argument("--report", action="store_true", help="write bench/results/<date>-<scale>.json and .md")
    ap.add_argument("--only", action="append", help="only these queries (file stems)")
    ap.add_argument("--memory-mib", type=int,
                    help="memory mode: every engine under this limit, spilling allowed, cold runs only; "
                         "writes bench/results/<date>-snds-memory-<scale>.json and .md with --report")
    ap.add_argument("--expect-spill", action="store_true",
                    help="memory mode: fail unless some statement of the gate spilled and completed (CI)")
    args = ap.parse_args()
    if args.memory_mib:
        args.runs = 0
    elif args.expect_spill:
        ap.error("--expect-spill needs --memory-mib")

    n, years = PRESETS[args.preset]
    n = args.beneficiaries or n
    years = args.years or years
    scale = f"{n}x{years}"
    work = (args.work or ROOT / "bench" / "work" / f"snds-{scale}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "reports").mkdir(exist_ok=True)
    pds = args.bin_dir / "pds"
    prep = json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").exists() else {}

    delivery = work / "delivery"
    if not (delivery / ".done").exists():
        say(f"== synthetic delivery: {n} beneficiaries, years {years}")
        prep["synth_s"] = timed([pds, "synth", "-q", "--beneficiaries", n, "--years", years,
                                 "--seed", "42", "--out", delivery])
        (delivery / ".done").touch()
    home = work / "home"
    # Both engines read files of one codec (PDS's default), so the codec is
    # not what the comparison measures; data prepared with another is redone.
    if not (home / ".done").exists() or (home / ".done").read_text() != CODEC:
        say("== pds load")
        if home.exists():
            sh(["rm", "-rf", home])
        sh([pds, "--home", home, "init", "--master-key-file", work / "master.key"], stdout=subprocess.DEVNULL)
        # The gate's per-statement memory: the analyses hold large joins in memory.
        cfg = home / "config.toml"
        if cfg.exists():
            text = cfg.read_text()
            text = re.sub(r"query_memory_mib = \d+", "query_memory_mib = 8192", text)
            text = re.sub(r"total_memory_mib = \d+", "total_memory_mib = 16384", text)
            # The anchor query returns every dispensing of a class: 11 M rows
            # at 3 M beneficiaries, above the default limit of 10 M.
            text = re.sub(r"max_result_rows = \d+", "max_result_rows = 100000000", text)
            cfg.write_text(text)
        prep["pds_load_s"] = timed([pds, "--home", home, "load", "-q", "--compression", CODEC, delivery])
        (home / ".done").write_text(CODEC)
    schema = work / "schema.json"
    with open(schema, "w") as f:
        sh([args.bin_dir / "snds-bench", "csv-schema", delivery], stdout=f)
    duck = work / "duckdb"
    if not (duck / ".done").exists() or (duck / ".done").read_text() != CODEC:
        say("== DuckDB: CSV → Parquet with COPY")
        if duck.exists():
            sh(["rm", "-rf", duck])
        prep["duckdb_convert_s"] = timed([sys.executable, DUCKDB, "convert", "--schema", schema,
                                          "--delivery", delivery, "--out", duck,
                                          "--compression", CODEC], stdout=subprocess.DEVNULL)
        (duck / ".done").write_text(CODEC)
    (work / "prepare.json").write_text(json.dumps(prep))

    sets = placeholders(years)
    names = sorted(p.stem for p in QUERIES.glob("*.sql"))
    if args.only:
        names = [q for q in names if q in args.only]
    results = {}
    for engine in ENGINES:
        sh(["rm", "-rf", work / "results" / engine])
        results[engine] = run_engine(engine, args, work, sets, names)
    if args.memory_mib:
        return memory_report(args, work, names, results, n, years, scale, prep)

    failures = []
    queries = []
    for q in names:
        entry = {"query": q, "sql": (QUERIES / f"{q}.sql").read_text().strip(),
                 "engines": {e: results[e][q] for e in ENGINES}}
        for e in ("gate", "datafusion"):
            diff = compare(work, q, e)
            if diff:
                failures.append(f"{q}: {e}: {diff}")
        if results["duckdb"][q]["rows"] == 0:
            failures.append(f"{q}: no row on any engine: the query tests nothing at this scale")
        if args.runs > 0:
            g = results["gate"][q]["median_s"]
            entry["pds_over_duckdb"] = g / results["duckdb"][q]["median_s"]
            entry["pds_over_datafusion"] = g / results["datafusion"][q]["median_s"]
        queries.append(entry)

    say("== results")
    for q in queries:
        e = q["engines"]
        t = lambda x: f"{x.get('median_s', x['cold_s']):8.3f}"
        say(f"  {q['query']:34} rows {e['gate']['rows']:>9}  gate {t(e['gate'])}  datafusion {t(e['datafusion'])}"
            f"  duckdb {t(e['duckdb'])}" + (f"  PDS/DuckDB {q['pds_over_duckdb']:.2f}" if "pds_over_duckdb" in q else ""))
    if failures:
        say("RESULTS DIFFER BETWEEN ENGINES:")
        for f in failures:
            say("  " + f)
        sys.exit(1)
    say(f"  every engine returned the same results on {len(names)} queries")

    if args.report:
        if args.runs == 0:
            sys.exit("--report needs hot runs (--runs N > 0)")
        ratios = {q["query"]: q["pds_over_duckdb"] for q in queries}
        worst = max(ratios, key=ratios.get)
        import duckdb
        doc = {
            "benchmark": "SNDS-bench: research analyses on PDS through the gate, raw DataFusion and DuckDB",
            "date": datetime.date.today().isoformat(),
            "scale": {"beneficiaries": n, "years": years, "preset": args.preset},
            "machine": machine(),
            "duckdb_version": duckdb.__version__,
            "parquet_codec": CODEC,
            "threads": os.cpu_count(),
            "runs": args.runs,
            "prepare": prep,
            "summary": {
                "geomean_pds_over_duckdb": geomean(ratios.values()),
                "geomean_pds_over_datafusion": geomean(q["pds_over_datafusion"] for q in queries),
                "geomean_datafusion_over_duckdb": geomean(
                    q["engines"]["datafusion"]["median_s"] / q["engines"]["duckdb"]["median_s"] for q in queries),
                "worst_query": worst,
                "worst_pds_over_duckdb": ratios[worst],
                "goal": "geomean PDS/DuckDB <= 1.0 and no query above 1.5",
            },
            "queries": queries,
        }
        write_report(f"{doc['date']}-snds-{scale}", doc, markdown(doc))


def write_report(stem, doc, md):
    """bench/results/<stem>.json and .md."""
    out = ROOT / "bench" / "results" / stem
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(md)
    say(f"  wrote {out}.json and .md")
    say(md)


def memory_report(args, work, names, results, n, years, scale, prep):
    """Memory mode: which statements complete under the limit, how long they
    take, how much memory the process peaks at and how much it spills."""
    failures = []
    queries = []
    for q in names:
        for e in ("gate", "datafusion"):
            diff = compare(work, q, e, results)
            if diff:
                failures.append(f"{q}: {e}: {diff}")
        queries.append({"query": q, "engines": {e: results[e][q] for e in ENGINES}})
    say("== results under the memory limit")
    for q in queries:
        cells = []
        for e in ENGINES:
            r = q["engines"][e]
            state = "FAILED" if "failed" in r else f"{r['cold_s']:.1f} s"
            cells.append(f"{e} {state} {r['peak_rss_bytes'] / 2**20:.0f} MiB")
        say(f"  {q['query']:34} " + "  ".join(cells))
    spilled = [q["query"] for q in queries
               if "failed" not in q["engines"]["gate"] and q["engines"]["gate"].get("spilled_bytes")]
    say(f"  the gate spilled and completed on: {', '.join(spilled) or 'none'}")
    if args.expect_spill and not spilled:
        failures.append(f"no statement of the gate spilled and completed under {args.memory_mib} MiB")
    if failures:
        say("MEMORY MODE FAILED:")
        for f in failures:
            say("  " + f)
        sys.exit(1)
    if args.report:
        import duckdb
        doc = {
            "benchmark": "SNDS-bench memory mode: every engine under one memory limit, spilling allowed",
            "date": datetime.date.today().isoformat(),
            "scale": {"beneficiaries": n, "years": years, "preset": args.preset},
            "memory_mib": args.memory_mib,
            "machine": machine(),
            "duckdb_version": duckdb.__version__,
            "parquet_codec": CODEC,
            "threads": os.cpu_count(),
            "prepare": prep,
            "queries": queries,
        }
        write_report(f"{doc['date']}-snds-memory-{scale}", doc, memory_markdown(doc))


def memory_markdown(doc):
    def cell(r):
        if "failed" in r:
            reason = r["failed"].replace("|", "/").replace("\n", " ")
            return f"failed: {reason[:160]}"
        spilled = r.get("spilled_bytes")
        sp = f", spilled {spilled / 2**20:.0f} MiB" if spilled else ""
        again = ", rerun with sort-merge joins" if r.get("rerun_sort_merge") else ""
        return f"{r['cold_s']:.2f} s, {r['peak_rss_bytes'] / 2**20:.0f} MiB{sp}{again}"
    lines = [
        f"# SNDS-bench memory mode {doc['date']}: {doc['scale']['beneficiaries']:,} beneficiaries × "
        f"{doc['scale']['years']}, {doc['memory_mib']} MiB",
        "",
        f"Machine: {doc['machine']['cores']} cores, {doc['machine']['memory']}, {doc['machine']['cpu']}. "
        f"DuckDB {doc['duckdb_version']} ({doc['threads']} threads). Every engine under a memory limit of "
        f"{doc['memory_mib']} MiB with spilling allowed (PDS: the gate's per-statement limit and its "
        "encrypted spill files, and a statement whose hash joins run out of memory runs again with "
        "sort-merge joins; raw DataFusion: the same pool and spill files, no second attempt; DuckDB: "
        "`memory_limit` and its temporary directory). One cold run per query in a fresh process (OS file cache warm); "
        "memory = peak resident set of that process, which also holds the result.",
        "",
        "| query | rows | PDS gate | DataFusion | DuckDB |",
        "|---|---:|---|---|---|",
    ]
    for q in doc["queries"]:
        e = q["engines"]
        rows = next((e[x]["rows"] for x in ("duckdb", "gate", "datafusion") if "rows" in e[x]), "")
        lines.append(f"| {q['query']} | {rows} | {cell(e['gate'])} | {cell(e['datafusion'])} | {cell(e['duckdb'])} |")
    done = {x: sum("failed" not in q["engines"][x] for q in doc["queries"]) for x in ENGINES}
    lines += [
        "",
        f"Completed: PDS gate {done['gate']}/{len(doc['queries'])}, DataFusion {done['datafusion']}/"
        f"{len(doc['queries'])}, DuckDB {done['duckdb']}/{len(doc['queries'])}. Results of every statement "
        f"completed by PDS or DataFusion and by DuckDB are the same (results over "
        f"{MEMORY_RESULTS_MAX_ROWS:,} rows compared by count).",
        "",
    ]
    p = doc["prepare"]
    if p:
        lines += [f"Preparation: " + ", ".join(f"{k} {v:.0f} s" for k, v in p.items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
