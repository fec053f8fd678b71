//! The gate's cost: the same analyses through the gate (a project with the
//! full perimeter, pseudonym mapping on, audit on) and on raw DataFusion
//! over the same encrypted files. Run by `bench/gate.sh`, which loads the
//! data first; writes a JSON report.
//!
//!     gate_bench HOME RUNS OUT.json

use std::time::Instant;

use anyhow::{Context, Result};
use pds_gate::{Gate, Target};
use pds_project::perimeter::{DatePrecision, Perimeter};
use pds_project::{AccessMode, NewProject, Role};

fn keys(a: &str, b: &str) -> String {
    pds_snds::schema::DCIR_JOIN_KEYS
        .iter()
        .map(|k| format!("{a}.{k} = {b}.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Typical first analyses on DCIR and PMSI (names as in the SNDS docs).
fn queries(pmsi: &[String]) -> Vec<(String, String)> {
    let mut q = vec![
        // The fixed cost of a statement: checks, session, two audit entries.
        ("select_one".to_string(), "SELECT 1".to_string()),
        ("count_claims".to_string(), "SELECT COUNT(*) FROM ER_PRS_F".to_string()),
        (
            "claims_per_month".into(),
            "SELECT date_trunc('month', EXE_SOI_DTD) AS m, COUNT(*) AS n, SUM(PRS_PAI_MNT) AS paid FROM ER_PRS_F GROUP BY 1 ORDER BY 1".into(),
        ),
        (
            "patients_per_nature".into(),
            "SELECT PRS_NAT_REF, COUNT(DISTINCT BEN_NIR_PSA) AS people FROM ER_PRS_F GROUP BY 1 ORDER BY 2 DESC LIMIT 20".into(),
        ),
        (
            "gp_visits_by_age_sex".into(),
            "SELECT BEN_SEX_COD, (EXTRACT(YEAR FROM EXE_SOI_DTD) - BEN_NAI_ANN) / 10 AS decade, COUNT(*) AS visits \
             FROM ER_PRS_F WHERE PRS_NAT_REF IN (1111, 1112) AND DPN_QLF <> 71 GROUP BY 1, 2 ORDER BY 1, 2".into(),
        ),
        (
            "a10_dispensings_join".into(),
            format!(
                "SELECT COUNT(DISTINCT p.BEN_NIR_PSA) AS people, SUM(f.PHA_ACT_QSN) AS boxes FROM ER_PRS_F p \
                 JOIN ER_PHA_F f ON {} JOIN IR_PHA_R r ON f.PHA_PRS_C13 = r.PHA_CIP_C13 WHERE r.PHA_ATC_C07 LIKE 'A10%'",
                keys("p", "f")
            ),
        ),
        (
            "beneficiaries_link".into(),
            "SELECT b.BEN_RES_DPT, COUNT(DISTINCT p.BEN_NIR_PSA) FROM ER_PRS_F p JOIN IR_BEN_R b ON p.BEN_NIR_PSA = b.BEN_NIR_PSA GROUP BY 1 ORDER BY 1".into(),
        ),
    ];
    for y in pmsi {
        q.push((
            format!("stays_{y}"),
            format!(
                "SELECT substr(b.DGN_PAL, 1, 3) AS icd3, COUNT(*) AS stays, COUNT(DISTINCT c.NIR_ANO_17) AS patients, AVG(b.SEJ_NBJ) AS los \
                 FROM T_MCO{y}B b JOIN T_MCO{y}C c ON b.ETA_NUM = c.ETA_NUM AND b.RSA_NUM = c.RSA_NUM GROUP BY 1 ORDER BY 2 DESC LIMIT 20"
            ),
        ));
    }
    q
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (home, runs, out) = match args.as_slice() {
        [_, h, r, o] => (h.clone(), r.parse::<usize>().context("RUNS")?, o.clone()),
        _ => anyhow::bail!("usage: gate_bench HOME RUNS OUT.json"),
    };
    let h = pds_home::Home::open(std::path::Path::new(&home))?;
    let gate = Gate::open(&h).await?;
    let tables: Vec<String> = gate
        .catalog()
        .tables(gate.catalog().latest("snds").await?.id)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let pmsi: Vec<String> = tables
        .iter()
        .filter_map(|t| {
            t.strip_prefix("T_MCO")
                .and_then(|r| r.strip_suffix('B'))
                .map(str::to_string)
        })
        .collect();
    // The full perimeter: every table and column; care dates at full
    // precision (the one identifier allowed) so answers equal raw ones.
    let names: Vec<&str> = tables.iter().map(|s| s.as_str()).collect();
    let mut per = Perimeter::all_columns(&names);
    per.coarsening.care_dates = DatePrecision::Day;
    if gate.catalog().project("bench-full").await?.is_none() {
        let admin = gate.admin("bench");
        admin
            .create(&NewProject {
                id: "bench-full".into(),
                title: "Gate benchmark".into(),
                authorisation: "BENCH".into(),
                starts_on: "2020-01-01".into(),
                expires_on: "2099-12-31".into(),
                mode: AccessMode::RowLevel,
                snapshot: None,
                perimeter: per,
                cohort: Vec::new(),
            })
            .await?;
        admin.grant("bench-full", "bench", Role::Researcher).await?;
    }
    let raw = pds_query::SnapshotSession::open(&h, None).await?;
    let target = Target::Project("bench-full".into());
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for (name, sql) in queries(&pmsi) {
        let (mut g, mut r) = (Vec::new(), Vec::new());
        let (mut g_rows, mut r_rows) = (0, 0);
        // One warm-up each (footers, caches), then alternate to share noise.
        for i in 0..=runs {
            let t = Instant::now();
            let (_, b) = raw.sql(&sql).await.with_context(|| format!("raw {name}"))?;
            let rt = t.elapsed().as_secs_f64();
            r_rows = b.iter().map(|b| b.num_rows()).sum::<usize>();
            let t = Instant::now();
            let (_, b) = gate
                .execute("bench", &target, &sql)
                .await?
                .collect()
                .await?;
            let gt = t.elapsed().as_secs_f64();
            g_rows = b.iter().map(|b| b.num_rows()).sum::<usize>();
            if i > 0 {
                r.push(rt);
                g.push(gt);
            }
        }
        anyhow::ensure!(
            g_rows == r_rows,
            "{name}: {g_rows} rows through the gate, {r_rows} raw"
        );
        let (gm, rm) = (median(g.clone()), median(r.clone()));
        let ratio = gm / rm;
        ratios.push(ratio);
        println!(
            "{name:<24} raw {rm:>8.3} s  gate {gm:>8.3} s  gate/raw {ratio:.3}  ({g_rows} rows)"
        );
        results.push(serde_json::json!({
            "query": name, "sql": sql, "rows": g_rows,
            "raw_s": r, "gate_s": g, "raw_median_s": rm, "gate_median_s": gm, "ratio": ratio,
        }));
    }
    // The fixed-cost probe is reported but not part of the analyses' median.
    ratios.remove(0);
    let med = median(ratios.clone());
    println!(
        "median gate/raw over {} queries: {med:.3} ({:+.1}%)",
        ratios.len(),
        (med - 1.0) * 100.0
    );
    let report = serde_json::json!({
        "benchmark": "gate overhead: project with full perimeter (pseudonym mapping, barrier, audit) vs raw DataFusion on the same files",
        "runs_per_query": runs,
        "median_ratio": med,
        "queries": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written {out}");
    Ok(())
}
