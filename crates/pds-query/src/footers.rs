//! Decrypted Parquet metadata, kept for the life of an open snapshot.
//!
//! Every scan of a Parquet file starts with its footer and, when a
//! predicate can prune pages, its page index. DataFusion caches both in the
//! session's runtime, but never for an encrypted file (the cache is keyed
//! by path alone, so a session without the key could be served metadata it
//! cannot decrypt), and the gate builds a new session for every statement
//! anyway. Without a cache each statement decrypts and parses again the
//! footers and page indexes of every file it touches: for `ER_PRS_F`, with
//! its 2,048-row pages, that is most of a small query's time.
//!
//! [`SnapshotFormat`] is DataFusion's `ParquetFormat` with one change: its
//! scans read metadata through a [`FooterCache`] that belongs to one
//! [`crate::OpenSnapshot`]. The cache is only reachable through that
//! snapshot's tables, which are only reachable by a session holding that
//! snapshot's key, and a snapshot's files never change (a path is written
//! once), so an entry never needs invalidating and never serves metadata to
//! a reader that could not have decrypted it. A miss also loads the page
//! index, so that later statements never go back to storage for it.
//!
//! The cache is bounded (`PDS_FOOTER_CACHE_MB`, default 1024 MiB); when full
//! it simply stops adding entries, and reads go to storage as before.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::common::Statistics;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetFileMetrics,
    ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};

/// Default bound of a snapshot's cache, in MiB.
const DEFAULT_LIMIT_MB: usize = 1024;

/// Decrypted footers and page indexes of one snapshot's files, by path.
pub struct FooterCache {
    limit_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<Path, Arc<ParquetMetaData>>,
    bytes: usize,
}

impl fmt::Debug for FooterCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (files, bytes) = self.usage();
        f.debug_struct("FooterCache")
            .field("files", &files)
            .field("bytes", &bytes)
            .field("limit_bytes", &self.limit_bytes)
            .finish()
    }
}

impl FooterCache {
    /// A cache holding at most `limit_bytes` of metadata.
    pub fn new(limit_bytes: usize) -> FooterCache {
        FooterCache {
            limit_bytes,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// A cache bounded by `PDS_FOOTER_CACHE_MB` (1024 when unset; 0 turns
    /// caching off). An unreadable value is an error, not a silent default.
    pub fn from_env() -> std::result::Result<FooterCache, String> {
        let v = std::env::var("PDS_FOOTER_CACHE_MB").ok();
        Ok(FooterCache::new(limit_bytes(v.as_deref())?))
    }

    /// Files held and their metadata's size in memory.
    pub fn usage(&self) -> (usize, usize) {
        let e = self.lock();
        (e.by_path.len(), e.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves a consistent map (inserts
        // are single calls), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, path: &Path) -> Option<Arc<ParquetMetaData>> {
        self.lock().by_path.get(path).cloned()
    }

    fn put(&self, path: &Path, m: &Arc<ParquetMetaData>) {
        let size = m.memory_size();
        let mut e = self.lock();
        if e.by_path.contains_key(path) || e.bytes.saturating_add(size) > self.limit_bytes {
            return;
        }
        e.bytes += size;
        e.by_path.insert(path.clone(), Arc::clone(m));
    }
}

/// The bound in bytes for a `PDS_FOOTER_CACHE_MB` value.
fn limit_bytes(mb: Option<&str>) -> std::result::Result<usize, String> {
    let mb = match mb {
        None => DEFAULT_LIMIT_MB,
        Some(v) => v.trim().parse::<usize>().map_err(|_| {
            format!(
                "PDS_FOOTER_CACHE_MB={v:?} is not a whole number of MiB; \
                 set it to e.g. 1024, or to 0 to turn the Parquet metadata cache off"
            )
        })?,
    };
    Ok(mb.saturating_mul(1024 * 1024))
}

/// DataFusion's Parquet format, reading metadata through a [`FooterCache`].
#[derive(Debug)]
pub struct SnapshotFormat {
    inner: ParquetFormat,
    cache: Arc<FooterCache>,
}

impl SnapshotFormat {
    /// `inner`, with its scans' metadata cached in `cache`.
    pub fn new(inner: ParquetFormat, cache: Arc<FooterCache>) -> SnapshotFormat {
        SnapshotFormat { inner, cache }
    }
}

#[async_trait]
impl FileFormat for SnapshotFormat {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }
    fn get_ext_with_compression(&self, c: &FileCompressionType) -> Result<String> {
        self.inner.get_ext_with_compression(c)
    }
    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }
    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }
    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Statistics> {
        self.inner
            .infer_stats(state, store, table_schema, object)
            .await
    }
    async fn infer_stats_and_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<datafusion::datasource::file_format::FileMeta> {
        self.inner
            .infer_stats_and_ordering(state, store, table_schema, object)
            .await
    }
    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store = state.runtime_env().object_store(&conf.object_store_url)?;
        let plan = self.inner.create_physical_plan(state, conf).await?;
        // Swap the reader factory of the scan ParquetFormat built (its
        // encryption factory and options stay as they are).
        let swapped = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
            .and_then(|config| {
                let source = config
                    .file_source()
                    .downcast_ref::<ParquetSource>()?
                    .clone()
                    .with_parquet_file_reader_factory(Arc::new(CachingReaderFactory {
                        store,
                        cache: Arc::clone(&self.cache),
                    }));
                Some(
                    FileScanConfigBuilder::from(config.clone())
                        .with_source(Arc::new(source))
                        .build(),
                )
            });
        Ok(match swapped {
            Some(config) => DataSourceExec::from_data_source(config),
            // Not the plan shape expected of ParquetFormat: keep it, uncached.
            None => plan,
        })
    }
    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}

#[derive(Debug)]
struct CachingReaderFactory {
    store: Arc<dyn ObjectStore>,
    cache: Arc<FooterCache>,
}

impl ParquetFileReaderFactory for CachingReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let file_metrics =
            ParquetFileMetrics::new(partition_index, file.object_meta.location.as_ref(), metrics);
        Ok(Box::new(CachingReader {
            store: Arc::clone(&self.store),
            meta: file.object_meta,
            cache: Arc::clone(&self.cache),
            metrics: file_metrics,
            size_hint: metadata_size_hint,
        }))
    }
}

struct CachingReader {
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    cache: Arc<FooterCache>,
    metrics: ParquetFileMetrics,
    size_hint: Option<usize>,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for CachingReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.metrics
            .bytes_scanned
            .add((range.end - range.start) as usize);
        let store = Arc::clone(&self.store);
        let location = self.meta.location.clone();
        async move { store.get_range(&location, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.metrics.bytes_scanned.add(total as usize);
        let store = Arc::clone(&self.store);
        let location = self.meta.location.clone();
        async move { store.get_ranges(&location, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            if let Some(m) = self.cache.get(&self.meta.location) {
                return Ok(m);
            }
            let decryption = options
                .and_then(|o| o.file_decryption_properties())
                .map(Arc::clone);
            let m = DFParquetMetadata::new(self.store.as_ref(), &self.meta)
                .with_decryption_properties(decryption)
                .with_metadata_size_hint(self.size_hint)
                // Loaded once, so that no later statement reads it again.
                .with_page_index_policy(Some(PageIndexPolicy::Optional))
                .fetch_metadata()
                .await
                .map_err(|e| {
                    ParquetError::General(format!(
                        "cannot read the metadata of {}: {e}",
                        self.meta.location
                    ))
                })?;
            self.cache.put(&self.meta.location, &m);
            Ok(m)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_read_in_mib_and_a_bad_value_says_how_to_fix_it() {
        assert_eq!(limit_bytes(None), Ok(1024 << 20));
        assert_eq!(limit_bytes(Some(" 16 ")), Ok(16 << 20));
        assert_eq!(limit_bytes(Some("0")), Ok(0));
        let e = limit_bytes(Some("1G")).unwrap_err();
        assert!(
            e.contains("PDS_FOOTER_CACHE_MB=\"1G\"") && e.contains("e.g. 1024"),
            "{e}"
        );
    }

    #[test]
    fn a_full_cache_adds_nothing_and_keeps_what_it_has() {
        let m = Arc::new(
            parquet::file::metadata::ParquetMetaDataBuilder::new(
                parquet::file::metadata::FileMetaData::new(
                    1,
                    0,
                    None,
                    None,
                    Arc::new(parquet::schema::types::SchemaDescriptor::new(Arc::new(
                        parquet::schema::types::Type::group_type_builder("schema")
                            .build()
                            .unwrap(),
                    ))),
                    None,
                ),
            )
            .build(),
        );
        let size = m.memory_size();
        let cache = FooterCache::new(size + size / 2);
        cache.put(&Path::from("a"), &m);
        cache.put(&Path::from("b"), &m);
        assert_eq!(cache.usage(), (1, size));
        assert!(cache.get(&Path::from("a")).is_some());
        assert!(cache.get(&Path::from("b")).is_none());
        // The same path twice is counted once.
        cache.put(&Path::from("a"), &m);
        assert_eq!(cache.usage(), (1, size));
    }
}
