//! The prestation key: one column that stands for eight of the nine DCIR
//! join keys.
//!
//! Every analysis of out-of-hospital claims joins `ER_PRS_F` to a
//! refinement table on nine columns. A hash join on nine columns hashes and
//! compares nine values per row and holds all nine in its table; the
//! loader therefore adds [`PRESTATION_KEY`] to every table that carries the
//! nine keys, and `pds-query`'s optimizer rule rewrites the researcher's
//! nine-key join onto it (plus whatever else the join compares).
//!
//! The key is the first 126 bits of SHA-256 over a canonical encoding of the
//! eight keys other than `FLX_DIS_DTD` (the flow date stays a join key of
//! its own). It is exact in practice: distinct tuples share a key with
//! probability about n²/2^127, 10^-19 for the 10^10 prestation lines of a
//! decade of national data, and a cryptographic digest cannot be steered
//! into collisions by crafted input. A line with a null key has a null
//! prestation key, so it joins nothing, as with the nine-key equality.

use std::sync::Arc;

use arrow_array::builder::Decimal128Builder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use pds_snds::ColumnType;
use pds_snds::arrow::PRESTATION_KEY_TYPE;
use pds_snds::schema::{DCIR_JOIN_KEYS, PRESTATION_KEY};
use sha2::{Digest, Sha256};

use crate::LoadError;

/// The canonical type of each join key; a table whose keys have other
/// types gets no prestation key (its values would not encode the same).
const KEY_TYPES: [ColumnType; 9] = [
    ColumnType::Date,
    ColumnType::Date,
    ColumnType::Integer,
    ColumnType::Integer,
    ColumnType::Integer,
    ColumnType::String,
    ColumnType::Integer,
    ColumnType::Integer,
    ColumnType::Integer,
];

/// Separates this digest from every other SHA-256 use of PDS.
const DOMAIN: &[u8] = b"pds/prestation-key/v1\0";

/// Whether a table with these columns gets the prestation key: it has the
/// nine join keys with their canonical types.
pub(crate) fn applies(columns: &[pds_snds::Column]) -> bool {
    DCIR_JOIN_KEYS.iter().zip(KEY_TYPES).all(|(k, ty)| {
        columns
            .iter()
            .any(|c| c.name == *k && same_encoding(c.ty, ty))
    })
}

fn same_encoding(a: ColumnType, b: ColumnType) -> bool {
    pds_snds::arrow::arrow_type(a) == pds_snds::arrow::arrow_type(b)
}

/// `batch` with the prestation key appended as its last column.
pub(crate) fn append(batch: &RecordBatch) -> Result<RecordBatch, LoadError> {
    let missing = |k: &str| {
        LoadError::Parquet(format!(
            "prestation key: no column {k} of the expected type"
        ))
    };
    let schema = batch.schema();
    let col = |k: &str| -> Result<&ArrayRef, LoadError> {
        schema
            .index_of(k)
            .map(|i| batch.column(i))
            .map_err(|_| missing(k))
    };
    // The eight keys after FLX_DIS_DTD, in DCIR_JOIN_KEYS order.
    let trt = col(DCIR_JOIN_KEYS[1])?
        .as_primitive_opt::<Date32Type>()
        .ok_or_else(|| missing(DCIR_JOIN_KEYS[1]))?;
    let mut ints = Vec::with_capacity(6);
    for k in [2, 3, 4, 6, 7, 8] {
        ints.push(
            col(DCIR_JOIN_KEYS[k])?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| missing(DCIR_JOIN_KEYS[k]))?,
        );
    }
    let org = col(DCIR_JOIN_KEYS[5])?
        .as_string_opt::<i32>()
        .ok_or_else(|| missing(DCIR_JOIN_KEYS[5]))?;
    let rows = batch.num_rows();
    let mut out = Decimal128Builder::with_capacity(rows);
    let mut buf = Vec::with_capacity(DOMAIN.len() + 80);
    for r in 0..rows {
        if trt.is_null(r) || org.is_null(r) || ints.iter().any(|a| a.is_null(r)) {
            out.append_null();
            continue;
        }
        buf.clear();
        buf.extend_from_slice(DOMAIN);
        buf.extend_from_slice(&trt.value(r).to_le_bytes());
        for a in &ints[..3] {
            buf.extend_from_slice(&a.value(r).to_le_bytes());
        }
        // Length-prefixed: no two strings encode alike whatever follows.
        let s = org.value(r).as_bytes();
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s);
        for a in &ints[3..] {
            buf.extend_from_slice(&a.value(r).to_le_bytes());
        }
        out.append_value(key_of(&Sha256::digest(&buf)));
    }
    let key: ArrayRef = Arc::new(out.finish().with_data_type(PRESTATION_KEY_TYPE));
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(field()));
    let mut cols = batch.columns().to_vec();
    cols.push(key);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| LoadError::Parquet(e.to_string()))
}

/// The first 126 bits of a digest, as a non-negative integer below 2^126
/// (so that it fits 38 decimal digits).
fn key_of(digest: &[u8]) -> i128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    (u128::from_be_bytes(b) >> 2) as i128
}

/// The key's field, with its description as the other columns carry theirs.
pub(crate) fn field() -> Field {
    Field::new(PRESTATION_KEY, PRESTATION_KEY_TYPE, true).with_metadata(
        [(
            "description".to_string(),
            pds_snds::schema::PRESTATION_KEY_DESCRIPTION.to_string(),
        )]
        .into_iter()
        .collect(),
    )
}

/// The key's Arrow type as the catalogue writes types.
pub(crate) fn type_name() -> String {
    DataType::to_string(&PRESTATION_KEY_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Date32Array, Decimal128Array, Int64Array, StringArray};

    fn batch(rows: &[(i32, [i64; 6], Option<&str>)]) -> RecordBatch {
        let mut fields = vec![Field::new("FLX_DIS_DTD", DataType::Date32, true)];
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Date32Array::from(vec![19_000; rows.len()]))];
        for (i, k) in DCIR_JOIN_KEYS.iter().enumerate().skip(1) {
            let a: ArrayRef = match i {
                1 => Arc::new(Date32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                5 => Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                _ => {
                    let j = [0, 0, 0, 1, 2, 0, 3, 4, 5][i];
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.1[j]).collect::<Vec<_>>(),
                    ))
                }
            };
            fields.push(Field::new(*k, a.data_type().clone(), true));
            cols.push(a);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    fn keys(b: &RecordBatch) -> Vec<Option<i128>> {
        let out = append(b).unwrap();
        assert_eq!(
            out.schema().field(out.num_columns() - 1).name(),
            PRESTATION_KEY
        );
        let a = out
            .column(out.num_columns() - 1)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap()
            .clone();
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i)))
            .collect()
    }

    #[test]
    fn equal_keys_give_equal_keys_and_any_difference_changes_it() {
        let base = (18_990, [1, 2, 3, 4, 5, 6], Some("01751234"));
        let mut rows = vec![base, base];
        for j in 0..6 {
            let mut r = base;
            r.1[j] += 1;
            rows.push(r);
        }
        rows.push((18_991, base.1, base.2));
        rows.push((base.0, base.1, Some("0175123")));
        let k = keys(&batch(&rows));
        assert_eq!(k[0], k[1]);
        let mut distinct: Vec<i128> = k.iter().skip(1).map(|v| v.unwrap()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), rows.len() - 1);
        assert!(
            k.iter()
                .all(|v| v.is_some_and(|v| (0..1i128 << 126).contains(&v)))
        );
    }

    #[test]
    fn a_null_key_gives_a_null_prestation_key() {
        let k = keys(&batch(&[(18_990, [1, 2, 3, 4, 5, 6], None)]));
        assert_eq!(k, vec![None]);
    }

    #[test]
    fn only_tables_with_the_nine_keys_get_it() {
        let (prs, _) = pds_snds::schema::table("ER_PRS_F").unwrap();
        assert!(applies(&prs.columns));
        let (ben, _) = pds_snds::schema::table("IR_BEN_R").unwrap();
        assert!(!applies(&ben.columns));
    }
}
