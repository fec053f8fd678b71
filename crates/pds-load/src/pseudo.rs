//! Platform pseudonyms: HMAC-SHA256 under the platform key.
//!
//! The same clear identifier gives the same pseudonym in every table (DCIR,
//! PMSI, deaths), so linkage survives; without the platform key the mapping
//! cannot be recomputed. Pseudonyms are the first 128 bits of the MAC in
//! upper-case hex (32 characters). The PMSI error markers
//! (`xxxxxxxxxxxxxxxxx`, `XXXXXXXXXXXXXXXXD`, `XXXXXXXXXXXXXXXXS`) are not
//! identifiers and stay as they are, so the standard quality filters keep
//! working.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::LoadError;

pub use pds_snds::identifiers::PATIENT_ID_COLUMNS as IDENTIFIER_COLUMNS;
use pds_snds::identifiers::PSEUDONYM_ERROR_MARKERS as MARKERS;

/// Computes platform pseudonyms.
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
}

impl Pseudonymiser {
    /// A pseudonymiser keyed by the platform key.
    pub fn new(key: &pds_keys::SecretKey) -> Self {
        // A 32-byte key is always a valid HMAC key.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Pseudonymiser { mac }
    }

    /// The pseudonym of one identifier.
    pub fn pseudonym(&self, clear: &str) -> String {
        if MARKERS.contains(&clear) {
            return clear.to_string();
        }
        let mut m = self.mac.clone();
        m.update(clear.as_bytes());
        let tag = m.finalize().into_bytes();
        hex::encode_upper(&tag[..16])
    }

    /// Replaces every identifier column of `batch`.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, LoadError> {
        let schema = batch.schema();
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        for (i, f) in schema.fields().iter().enumerate() {
            if !IDENTIFIER_COLUMNS.contains(&f.name().as_str()) {
                continue;
            }
            let Some(a) = cols[i].as_any().downcast_ref::<StringArray>() else {
                return Err(LoadError::Parquet(format!(
                    "identifier column {} is not text",
                    f.name()
                )));
            };
            // People recur on many lines of a chunk: one MAC per distinct value.
            let mut cache: HashMap<&str, String> = HashMap::new();
            let mut out = StringBuilder::with_capacity(a.len(), a.len() * 32);
            for r in 0..a.len() {
                if a.is_null(r) {
                    out.append_null();
                } else {
                    let v = a.value(r);
                    out.append_value(cache.entry(v).or_insert_with(|| self.pseudonym(v)));
                }
            }
            let out = out.finish();
            cols[i] = Arc::new(out);
        }
        RecordBatch::try_new(schema, cols).map_err(|e| LoadError::Parquet(e.to_string()))
    }
}
