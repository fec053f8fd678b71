//! The cost of disclosure control: the same aggregate analyses (after
//! `../shared/docs/snds-data-model.md` §6) in a row-level project and in an
//! aggregate-only project with the same perimeter, where every published
//! value also counts its distinct patients, suppression, secondary
//! suppression and the query-set tracker run. Run by
//! `bench/disclosure.sh` (`snds-bench disclosure HOME RUNS OUT.json`), which
//! loads the data first; writes a JSON report.

use std::time::Instant;

use anyhow::{Context, Result};
use pds_gate::{Gate, Target};
use pds_project::perimeter::Perimeter;
use pds_project::{AccessMode, NewProject, Role};

fn j9(a: &str, b: &str) -> String {
    pds_snds::schema::DCIR_JOIN_KEYS
        .iter()
        .map(|k| format!("{a}.{k} = {b}.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Aggregate analyses as a researcher writes them (standard SNDS SQL).
fn queries(y: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "q1_atc_users_year_sex_age",
            format!(
                "SELECT EXTRACT(YEAR FROM p.EXE_SOI_DTD) AS yr, p.BEN_SEX_COD, \
                   CASE WHEN p.BEN_AMA_COD < 18 THEN '0-17' WHEN p.BEN_AMA_COD < 40 THEN '18-39' \
                        WHEN p.BEN_AMA_COD < 65 THEN '40-64' WHEN p.BEN_AMA_COD < 80 THEN '65-79' ELSE '80+' END AS age_grp, \
                   COUNT(DISTINCT p.BEN_NIR_PSA) AS n_patients, SUM(f.PHA_ACT_QSN) AS n_boxes \
                 FROM ER_PRS_F p JOIN ER_PHA_F f ON {} JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13 \
                 WHERE p.DPN_QLF <> 71 AND r.PHA_ATC_C07 LIKE 'C10AA%' GROUP BY 1, 2, 3",
                j9("f", "p")
            ),
        ),
        (
            "q2_stays_by_main_diagnosis",
            format!(
                "SELECT substr(b.DGN_PAL, 1, 3) AS icd3, b.COD_SEX, COUNT(*) AS n_stays, COUNT(DISTINCT c.NIR_ANO_17) AS n_patients, \
                   AVG(b.SEJ_NBJ) AS mean_los \
                 FROM T_MCO{y}B b JOIN T_MCO{y}C c ON c.ETA_NUM = b.ETA_NUM AND c.RSA_NUM = b.RSA_NUM \
                 WHERE b.GRG_GHM NOT LIKE '90%' GROUP BY 1, 2"
            ),
        ),
        (
            "q4_new_users_by_month",
            format!(
                "SELECT date_trunc('month', index_date) AS m, COUNT(*) AS new_users FROM ( \
                   SELECT p.BEN_NIR_PSA, MIN(p.EXE_SOI_DTD) AS index_date \
                   FROM ER_PRS_F p JOIN ER_PHA_F f ON {} JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13 \
                   WHERE p.DPN_QLF <> 71 AND r.PHA_ATC_C07 LIKE 'B01AF%' AND f.PHA_ACT_QSN > 0 \
                   GROUP BY p.BEN_NIR_PSA) t GROUP BY 1",
                j9("f", "p")
            ),
        ),
        (
            "q5_ald_prevalence",
            "SELECT ben.BEN_RES_DPT, ben.BEN_SEX_COD, COUNT(DISTINCT ben.BEN_NIR_PSA) AS n \
             FROM IR_IMB_R i JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = i.BEN_NIR_PSA \
             WHERE i.IMB_ETM_NAT IN (41, 43, 45) AND (i.MED_MTF_COD LIKE 'E10%' OR i.MED_MTF_COD LIKE 'E11%') \
             GROUP BY 1, 2"
                .into(),
        ),
        (
            "q6_gp_consultations",
            "SELECT p.BEN_RES_DPT, date_trunc('month', p.EXE_SOI_DTD) AS m, SUM(p.PRS_ACT_QTE) AS n_consult, \
               SUM(p.PRS_PAI_MNT) AS paid, COUNT(DISTINCT p.BEN_NIR_PSA) AS n_patients \
             FROM ER_PRS_F p WHERE p.PRS_NAT_REF IN (1110, 1111) AND p.DPN_QLF <> 71 GROUP BY 1, 2"
                .into(),
        ),
        (
            "q7_hba1c_per_diabetic",
            format!(
                "SELECT LEAST(n, 6) AS tests, COUNT(*) AS patients FROM ( \
                   SELECT p.BEN_NIR_PSA, SUM(b.BIO_ACT_QSN) AS n \
                   FROM ER_PRS_F p JOIN ER_BIO_F b ON {} \
                   WHERE b.BIO_PRS_IDE = 1577 AND p.DPN_QLF <> 71 GROUP BY p.BEN_NIR_PSA) t GROUP BY 1",
                j9("b", "p")
            ),
        ),
        (
            "claims_per_month",
            "SELECT date_trunc('month', EXE_SOI_DTD) AS m, COUNT(*) AS n, SUM(PRS_PAI_MNT) AS paid FROM ER_PRS_F GROUP BY 1"
                .into(),
        ),
        (
            "patients_per_nature",
            "SELECT PRS_NAT_REF, COUNT(DISTINCT BEN_NIR_PSA) AS people FROM ER_PRS_F GROUP BY 1".into(),
        ),
        (
            "q10_drug_spending_by_atc",
            format!(
                "SELECT substr(r.PHA_ATC_C07, 1, 3) AS atc3, SUM(p.PRS_PAI_MNT) AS paid, SUM(f.PHA_ACT_QSN) AS boxes \
                 FROM ER_PRS_F p JOIN ER_PHA_F f ON {} JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13 \
                 WHERE p.DPN_QLF <> 71 GROUP BY 1",
                j9("f", "p")
            ),
        ),
    ]
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

async fn project(gate: &Gate, id: &str, mode: AccessMode, per: &Perimeter) -> Result<()> {
    if gate.catalog().project(id).await?.is_none() {
        let admin = gate.admin("bench");
        admin
            .create(&NewProject {
                id: id.into(),
                title: "Disclosure benchmark".into(),
                authorisation: "BENCH".into(),
                starts_on: "2020-01-01".into(),
                expires_on: "2099-12-31".into(),
                mode,
                snapshot: None,
                perimeter: per.clone(),
                cohort: Vec::new(),
            })
            .await?;
        admin.grant(id, "bench", Role::Researcher).await?;
    }
    Ok(())
}

/// Runs every query `runs` times (after one warm-up) in both projects and
/// writes the report to `out`.
pub async fn run(home: &std::path::Path, runs: usize, out: &std::path::Path) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let gate = Gate::open(&h).await?;
    let tables: Vec<String> = gate
        .catalog()
        .tables(gate.catalog().latest("snds").await?.id)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let year = tables
        .iter()
        .find_map(|t| t.strip_prefix("T_MCO").and_then(|r| r.strip_suffix('B')))
        .context("no PMSI table")?
        .to_string();
    let names: Vec<&str> = tables.iter().map(|s| s.as_str()).collect();
    // The same perimeter (default coarsening) in both modes.
    let per = Perimeter::all_columns(&names);
    project(&gate, "bench-rows", AccessMode::RowLevel, &per).await?;
    project(&gate, "bench-agg", AccessMode::AggregateOnly, &per).await?;
    let rows_t = Target::Project("bench-rows".into());
    let agg_t = Target::Project("bench-agg".into());
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for (name, sql) in queries(&year) {
        let (mut r, mut a) = (Vec::new(), Vec::new());
        let (mut r_rows, mut a_rows) = (0, 0);
        let mut summary = None;
        for i in 0..=runs {
            let t = Instant::now();
            let (_, b) = gate
                .execute("bench", &rows_t, &sql)
                .await
                .with_context(|| format!("row-level {name}"))?
                .collect()
                .await?;
            let rt = t.elapsed().as_secs_f64();
            r_rows = b.iter().map(|b| b.num_rows()).sum::<usize>();
            let t = Instant::now();
            let mut s = gate
                .execute("bench", &agg_t, &sql)
                .await
                .with_context(|| format!("aggregate-only {name}"))?;
            let mut n = 0;
            while let Some(b) = s.next_batch().await {
                n += b?.num_rows();
            }
            let at = t.elapsed().as_secs_f64();
            a_rows = n;
            summary = s.disclosure();
            if i > 0 {
                r.push(rt);
                a.push(at);
            }
        }
        let summary = summary.context("aggregate-only results are controlled")?;
        anyhow::ensure!(
            a_rows as u64 + summary.rows_suppressed + summary.rows_secondary == r_rows as u64,
            "{name}: {a_rows} rows shown + {} withheld != {r_rows} rows in row-level mode",
            summary.rows_suppressed + summary.rows_secondary
        );
        let (rm, am) = (median(r.clone()), median(a.clone()));
        let ratio = am / rm;
        ratios.push(ratio);
        println!(
            "{name:<28} row-level {rm:>7.3} s  aggregate-only {am:>7.3} s  ratio {ratio:.3}  ({r_rows} rows, {} withheld, {} values withheld)",
            summary.rows_suppressed + summary.rows_secondary,
            summary.cells_suppressed + summary.cells_secondary + summary.cells_dominance
        );
        results.push(serde_json::json!({
            "query": name, "sql": sql, "rows_row_level": r_rows, "rows_aggregate_only": a_rows,
            "disclosure": summary, "row_level_s": r, "aggregate_only_s": a,
            "row_level_median_s": rm, "aggregate_only_median_s": am, "ratio": ratio,
        }));
    }
    let med = median(ratios.clone());
    println!(
        "median aggregate-only/row-level over {} queries: {med:.3} ({:+.1}%)",
        ratios.len(),
        (med - 1.0) * 100.0
    );
    let report = serde_json::json!({
        "benchmark": "disclosure control: aggregate-only project (distinct patients per value, suppression, tracker) vs row-level project, same perimeter and data",
        "machine": "2 cores, 24 GiB RAM (see /work/.library/env)",
        "runs_per_query": runs,
        "median_ratio": med,
        "queries": results,
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("written {}", out.display());
    Ok(())
}
