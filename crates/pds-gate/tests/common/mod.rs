//! Shared set-up of the gate tests: a home with a loaded synthetic
//! delivery, helpers to run statements and read results.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use pds_gate::{Gate, GateError, Target};
use pds_home::{Home, InitMaster};

/// A home with 300 synthetic people over 2021-2022, loaded.
pub async fn loaded(dir: &Path) -> Home {
    let delivery = dir.join("delivery");
    let cfg = pds_synth::Config {
        beneficiaries: 300,
        first_year: 2021,
        last_year: 2022,
        seed: 11,
        out: delivery.clone(),
        format: pds_synth::Format::Csv,
        threads: Some(2),
    };
    pds_synth::generate(&cfg, &|_| {}).unwrap();
    let h = Home::init(
        &dir.join("home"),
        &InitMaster::KeyFile(dir.join("master.key")),
    )
    .await
    .unwrap();
    let opts = pds_load::LoadOptions {
        threads: 2,
        ..Default::default()
    };
    pds_load::load(&h, &delivery, &opts, Arc::new(|_: &pds_load::Progress| {}))
        .await
        .unwrap();
    h
}

/// Runs a statement to the end.
pub async fn run(
    g: &Gate,
    who: &str,
    t: &Target,
    sql: &str,
) -> Result<Vec<RecordBatch>, GateError> {
    let s = g.execute(who, t, sql).await?;
    Ok(s.collect().await?.1)
}

/// Project target.
pub fn p(id: &str) -> Target {
    Target::Project(id.to_string())
}

/// The operator target on the latest snapshot.
pub fn op() -> Target {
    Target::Operator { snapshot: None }
}

/// The single integer of a result.
pub fn one(batches: &[RecordBatch]) -> i64 {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "expected one row");
    let b = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    let c = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().value(0)
}

/// Column `i` of a result as strings (NULL as "NULL").
pub fn strings(batches: &[RecordBatch], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let c = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
        let c = c.as_string::<i32>();
        for r in 0..c.len() {
            out.push(if c.is_null(r) {
                "NULL".into()
            } else {
                c.value(r).to_string()
            });
        }
    }
    out
}

/// Column names of a result.
pub fn names(batches: &[RecordBatch]) -> Vec<String> {
    batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Expects a refusal and returns its message.
pub async fn refused(g: &Gate, who: &str, t: &Target, sql: &str) -> String {
    match run(g, who, t, sql).await {
        Err(GateError::Refused(m)) => m,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

/// Expects a failure (not a refusal) and returns its message.
pub async fn failed(g: &Gate, who: &str, t: &Target, sql: &str) -> String {
    match run(g, who, t, sql).await {
        Err(GateError::Failed(m)) => m,
        other => panic!("{sql}: expected a failure, got {other:?}"),
    }
}
