//! Identifier numbers: one dense 64-bit integer per distinct stored
//! identifier of a snapshot, stored beside every identifier column.
//!
//! Why: a platform pseudonym is 32 characters. Reading, hashing and
//! comparing it is most of the cost of the analyses that follow patients
//! (`docs/performance.md`: a year of `ER_PRS_F` is counted in 1.32 s on
//! `BEN_NIR_PSA` against 0.45 s on a number). The gate joins, groups and
//! counts on the number instead wherever it keeps identifiers stored
//! (`pds_gate::late`), and maps a number back to its identifier only where
//! a value is read.
//!
//! One numbering covers every identifier column of the snapshot
//! (`BEN_NIR_PSA`, `NIR_ANO_17`, `BEN_IDT_ANO`, …), so two identifiers are
//! equal exactly when their numbers are, whichever columns hold them.
//! Numbers follow the order in which the load first meets each identifier;
//! the dispatcher assigns them in file order, so a load is reproducible.
//! The dictionary (number → stored identifier) is written as it grows to
//! one encrypted Parquet file under the snapshot's prefix
//! ([`pds_snds::identifiers::DICTIONARY_PATH`]), row `n` for number `n`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use pds_snds::identifiers::{DICTIONARY_NUMBER, DICTIONARY_PATH, DICTIONARY_VALUE, number_column};
use pds_storage::{ObjectWriter, Storage};

use crate::LoadError;

/// Dictionary entries buffered before they are written as one batch.
const FLUSH_ENTRIES: usize = 1 << 20;

/// The numbering of one load and the writer of its dictionary.
pub(crate) struct Numbering {
    /// Platform pseudonyms (32 upper-case hexadecimal digits) by value:
    /// 16 bytes a key instead of a 32-byte string, which matters at
    /// national scale (some 70 million people).
    hex: HashMap<u128, i64>,
    /// Anything else an identifier column holds (the PMSI error markers).
    other: HashMap<String, i64>,
    next: i64,
    /// Entries numbered since the last write, from `written` on.
    pending: StringBuilder,
    written: i64,
    sink: Sink,
}

/// Where the dictionary goes: opened at the first entry, so a delivery
/// without identifiers (referentials only) writes no dictionary.
struct Sink {
    storage: Storage,
    rt: tokio::runtime::Handle,
    rel_path: String,
    key: pds_keys::SecretKey,
    compression: pds_home::Compression,
    writer: Option<ArrowWriter<ObjectWriter>>,
}

impl Numbering {
    /// A numbering whose dictionary goes to `prefix`/[`DICTIONARY_PATH`],
    /// encrypted with the snapshot's data key.
    pub(crate) fn new(
        storage: Storage,
        rt: tokio::runtime::Handle,
        prefix: &str,
        key: pds_keys::SecretKey,
        compression: pds_home::Compression,
    ) -> Numbering {
        Numbering {
            hex: HashMap::new(),
            other: HashMap::new(),
            next: 0,
            pending: StringBuilder::new(),
            written: 0,
            sink: Sink {
                storage,
                rt,
                rel_path: format!("{prefix}/{DICTIONARY_PATH}"),
                key,
                compression,
                writer: None,
            },
        }
    }

    /// `batch` with the number column of each of its identifier columns
    /// appended, in the order of those columns. Identifiers met for the
    /// first time get the next numbers.
    pub(crate) fn number(&mut self, batch: RecordBatch) -> Result<RecordBatch, LoadError> {
        let schema = batch.schema();
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (i, f) in schema.fields().iter().enumerate() {
            if !crate::IDENTIFIER_COLUMNS.contains(&f.name().as_str()) {
                continue;
            }
            let Some(ids) = batch.column(i).as_any().downcast_ref::<StringArray>() else {
                return Err(LoadError::Parquet(format!(
                    "identifier column {} is not text",
                    f.name()
                )));
            };
            columns.push(Arc::new(self.numbers_of(ids)?));
            fields.push(Arc::new(Field::new(
                number_column(f.name()),
                DataType::Int64,
                f.is_nullable(),
            )));
        }
        if self.pending.len() >= FLUSH_ENTRIES {
            self.flush()?;
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| LoadError::Parquet(e.to_string()))
    }

    fn numbers_of(&mut self, ids: &StringArray) -> Result<arrow_array::Int64Array, LoadError> {
        let mut out = Int64Builder::with_capacity(ids.len());
        // Lines of one person are often adjacent.
        let mut last: Option<(&str, i64)> = None;
        for r in 0..ids.len() {
            if ids.is_null(r) {
                out.append_null();
                continue;
            }
            let v = ids.value(r);
            let n = match last {
                Some((s, n)) if s == v => n,
                _ => self.number_of(v),
            };
            last = Some((v, n));
            out.append_value(n);
        }
        Ok(out.finish())
    }

    fn number_of(&mut self, v: &str) -> i64 {
        let next = self.next;
        let n = match hex_key(v) {
            Some(k) => *self.hex.entry(k).or_insert(next),
            None => match self.other.get(v) {
                Some(n) => *n,
                None => {
                    self.other.insert(v.to_string(), next);
                    next
                }
            },
        };
        if n == next {
            self.next += 1;
            self.pending.append_value(v);
        }
        n
    }

    /// Writes the entries numbered since the last write.
    fn flush(&mut self) -> Result<(), LoadError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let values = self.pending.finish();
        let n = values.len() as i64;
        let numbers: arrow_array::Int64Array = (self.written..self.written + n).collect();
        let batch = RecordBatch::try_new(
            dictionary_schema(),
            vec![Arc::new(numbers), Arc::new(values)],
        )
        .map_err(|e| LoadError::Parquet(e.to_string()))?;
        let writer = self.sink.writer()?;
        writer.write(&batch).map_err(crate::pipeline::pq)?;
        writer.flush().map_err(crate::pipeline::pq)?;
        self.written += n;
        Ok(())
    }

    /// Writes what remains and closes the dictionary. Returns the number of
    /// identifiers numbered.
    pub(crate) fn finish(mut self) -> Result<u64, LoadError> {
        self.flush()?;
        if let Some(w) = self.sink.writer.take() {
            let inner = w.into_inner().map_err(crate::pipeline::pq)?;
            inner.finish()?;
        }
        Ok(self.next as u64)
    }
}

impl Sink {
    fn writer(&mut self) -> Result<&mut ArrowWriter<ObjectWriter>, LoadError> {
        if self.writer.is_none() {
            let schema = dictionary_schema();
            let props = crate::pipeline::writer_props(
                &self.key,
                &self.rel_path,
                &schema,
                None,
                self.compression,
            )?;
            let out = self.storage.writer(&self.rel_path, self.rt.clone());
            self.writer =
                Some(ArrowWriter::try_new(out, schema, Some(props)).map_err(crate::pipeline::pq)?);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| LoadError::Parquet("the dictionary writer vanished".into()))
    }
}

/// The dictionary's schema: number, stored identifier.
fn dictionary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(DICTIONARY_NUMBER, DataType::Int64, false),
        Field::new(DICTIONARY_VALUE, DataType::Utf8, false),
    ]))
}

/// The 128-bit value of a platform pseudonym written as the loader writes
/// it (exactly 32 upper-case hexadecimal digits); `None` for anything
/// else, so that two different strings never share a key.
fn hex_key(v: &str) -> Option<u128> {
    let b = v.as_bytes();
    if b.len() != 32 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u128::from_str_radix(v, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_pseudonyms_take_the_compact_key() {
        let p = "0123456789ABCDEF0123456789ABCDEF";
        assert_eq!(hex_key(p), Some(0x0123456789ABCDEF0123456789ABCDEF));
        // Lower case, a sign, another length or a marker: kept as text, so
        // no two strings collide on one key.
        assert_eq!(hex_key(&p.to_lowercase()), None);
        assert_eq!(hex_key("+123456789ABCDEF0123456789ABCDEF"), None);
        assert_eq!(hex_key(&p[1..]), None);
        assert_eq!(hex_key("XXXXXXXXXXXXXXXXD"), None);
    }
}
