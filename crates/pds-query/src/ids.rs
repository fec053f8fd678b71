//! The dictionary of a snapshot's identifier numbers.
//!
//! `pds load` stores beside every patient identifier a dense 64-bit number
//! (`pds_snds::identifiers::number_column`), one numbering per snapshot,
//! and writes the dictionary number → stored identifier as one encrypted
//! Parquet file ([`pds_snds::identifiers::DICTIONARY_PATH`]). The gate
//! joins, groups and counts on numbers and turns a number back into its
//! identifier, through this dictionary, only where a value is read.
//!
//! The dictionary is read once per open snapshot, when a statement first
//! needs it (most statements never do: they count patients, they do not
//! list them), and then held in memory: about 40 bytes per identifier,
//! 50 MB for a million people, some 3 GB for the national population.

use std::sync::Arc;

use arrow::array::{Array, AsArray, LargeStringArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{SessionContext, ident};
use pds_snds::identifiers::{DICTIONARY_NUMBER, DICTIONARY_PATH, DICTIONARY_VALUE};

use crate::{QueryError, STORE_URL, footers, listing_options};

/// The identifier dictionary of one snapshot, read on first use.
pub struct IdDictionary {
    snapshot: i64,
    /// A session that can read (and decrypt) the snapshot's files, with no
    /// memory limit of a statement: the dictionary is shared by all.
    ctx: SessionContext,
    path: String,
    footers: Arc<footers::FooterCache>,
    values: tokio::sync::OnceCell<LargeStringArray>,
}

impl std::fmt::Debug for IdDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the identifiers.
        f.debug_struct("IdDictionary")
            .field("snapshot", &self.snapshot)
            .field("loaded", &self.values.get().map(Array::len))
            .finish()
    }
}

impl IdDictionary {
    /// The dictionary of the snapshot stored under `prefix`, read through
    /// `ctx` (which must hold the snapshot's key) when first needed.
    pub fn new(
        snapshot: i64,
        prefix: &str,
        ctx: SessionContext,
        footers: Arc<footers::FooterCache>,
    ) -> IdDictionary {
        IdDictionary {
            snapshot,
            ctx,
            path: format!("{}/{DICTIONARY_PATH}", prefix.trim_end_matches('/')),
            footers,
            values: tokio::sync::OnceCell::new(),
        }
    }

    /// A dictionary already in memory, entry `n` for number `n` (for tools
    /// and tests that build their own tables).
    pub fn in_memory<'a>(snapshot: i64, values: impl IntoIterator<Item = &'a str>) -> IdDictionary {
        let values: LargeStringArray = values.into_iter().map(Some).collect();
        IdDictionary {
            snapshot,
            ctx: SessionContext::new(),
            path: String::new(),
            footers: Arc::new(footers::FooterCache::new(0)),
            values: tokio::sync::OnceCell::new_with(Some(values)),
        }
    }

    /// The snapshot whose numbers this dictionary holds.
    pub fn snapshot(&self) -> i64 {
        self.snapshot
    }

    /// Reads the dictionary if it is not in memory yet. Fails if the file is
    /// missing, unreadable with the snapshot's key, or not the dense list
    /// `0, 1, 2, …` the loader writes.
    pub async fn load(&self) -> Result<(), QueryError> {
        self.values
            .get_or_try_init(|| self.read())
            .await
            .map(|_| ())
    }

    /// The loaded identifiers, where entry `n` is the identifier numbered
    /// `n`; `None` before [`IdDictionary::load`].
    pub fn values(&self) -> Option<&LargeStringArray> {
        self.values.get()
    }

    async fn read(&self) -> Result<LargeStringArray, QueryError> {
        let bad = |why: String| {
            QueryError::Snapshot(format!(
                "snapshot {}: its identifier dictionary ({}) {why}; load the delivery again \
                 with `pds load` to rebuild the snapshot",
                self.snapshot, self.path
            ))
        };
        let url = ListingTableUrl::parse(format!("{STORE_URL}/{}", self.path))
            .map_err(|e| bad(format!("has an unusable path: {e}")))?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(listing_options(self.footers.clone()))
            .infer_schema(&self.ctx.state())
            .await
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        let table = ListingTable::try_new(config).map_err(|e| bad(e.to_string()))?;
        let batches = self
            .ctx
            .read_table(Arc::new(table))
            .and_then(|f| {
                f.select(vec![ident(DICTIONARY_NUMBER), ident(DICTIONARY_VALUE)])?
                    .sort(vec![ident(DICTIONARY_NUMBER).sort(true, false)])
            })
            .map_err(|e| bad(e.to_string()))?
            .collect()
            .await
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut parts = Vec::with_capacity(batches.len());
        let mut expected = 0i64;
        for b in &batches {
            let numbers = b
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| bad(format!("has a {} number column", b.column(0).data_type())))?;
            if numbers.null_count() > 0 || b.column(1).null_count() > 0 {
                return Err(bad("has empty entries".into()));
            }
            for n in numbers.values() {
                if *n != expected {
                    return Err(bad(format!(
                        "is not dense: entry {n} where {expected} was expected"
                    )));
                }
                expected += 1;
            }
            let values = arrow::compute::cast(b.column(1), &DataType::LargeUtf8)
                .map_err(|e| bad(e.to_string()))?;
            parts.push(values);
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let all = if refs.is_empty() {
            Arc::new(LargeStringArray::from(Vec::<&str>::new())) as arrow::array::ArrayRef
        } else {
            arrow::compute::concat(&refs).map_err(|e| bad(e.to_string()))?
        };
        Ok(all.as_string::<i64>().clone())
    }
}
