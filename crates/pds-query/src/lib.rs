//! Read-only SQL over one PDS snapshot, with DataFusion.
//!
//! [`SnapshotSession::open`] builds a DataFusion session in which:
//!
//! * every table of the snapshot is registered from the catalogue's file
//!   list (never by listing storage, so stray objects are never read);
//! * the only object store is the home's storage (`pds://store`); `file://`
//!   is removed, as are CREATE EXTERNAL TABLE factories, so SQL cannot reach
//!   other files;
//! * Parquet files are decrypted by [`SnapshotKeys`], a DataFusion
//!   `EncryptionFactory` that holds the unwrapped snapshot key in memory and
//!   binds each file's path as AAD. No key ever appears in SQL text or in
//!   the session configuration;
//! * statements run with DDL, DML (incl. COPY) and `SET` refused.
//!
//! SNDS names are upper case and identifiers are case-sensitive (no folding
//! to lower case), so queries read like the SNDS documentation:
//! `SELECT BEN_NIR_PSA FROM ER_PRS_F`.
#![forbid(unsafe_code)]

pub mod footers;
pub mod ids;
pub mod joins;
pub mod prskey;
pub mod spill;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::TableReference;
use datafusion::common::config::{EncryptionFactoryOptions, TableParquetOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use pds_home::Home;
use pds_keys::SecretKey;

/// The URL under which the home's storage is registered.
pub const STORE_URL: &str = "pds://store";
/// The id of the decryption factory in the DataFusion runtime.
pub const FACTORY_ID: &str = "pds-snapshot-keys";

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is refused or fails.
    #[error("{0}")]
    Sql(String),
    /// The snapshot does not exist or cannot be opened.
    #[error("{0}")]
    Snapshot(String),
    /// Home error.
    #[error(transparent)]
    Home(#[from] pds_home::HomeError),
    /// Catalogue error.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// Key error.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
    /// Output formatting error.
    #[error("output: {0}")]
    Output(String),
}

fn df(e: datafusion::error::DataFusionError) -> QueryError {
    QueryError::Sql(e.to_string())
}

/// An `EncryptionFactory` holding the data keys of open snapshots, by
/// storage prefix (`snapshots/3`). A file outside a known prefix gets no key
/// and fails to read: fail closed.
#[derive(Clone, Default)]
pub struct SnapshotKeys {
    keys: HashMap<String, SecretKey>,
}

impl std::fmt::Debug for SnapshotKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("SnapshotKeys")
            .field("prefixes", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SnapshotKeys {
    /// Adds the key of the snapshot stored under `prefix`.
    pub fn insert(&mut self, prefix: &str, key: SecretKey) {
        self.keys
            .insert(prefix.trim_end_matches('/').to_string(), key);
    }

    fn key_for(&self, path: &str) -> Option<&SecretKey> {
        self.keys
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|(_, k)| k)
    }
}

#[async_trait]
impl EncryptionFactory for SnapshotKeys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        file_path: &object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileEncryptionProperties>>> {
        // Snapshots are immutable: nothing is ever written through a session.
        Err(datafusion::error::DataFusionError::Plan(format!(
            "refusing to write {file_path}: PDS snapshots are read-only"
        )))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileDecryptionProperties>>> {
        let path = file_path.as_ref();
        let key = self.key_for(path).ok_or_else(|| {
            datafusion::error::DataFusionError::Plan(format!(
                "{path} belongs to no open snapshot; it cannot be decrypted here"
            ))
        })?;
        let props = FileDecryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(path.as_bytes().to_vec())
            .build()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(Some(props))
    }
}

/// The statement options of every PDS query: no DDL, no DML (so no COPY),
/// no `SET`.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A DataFusion session over one snapshot.
pub struct SnapshotSession {
    ctx: SessionContext,
    /// The snapshot id.
    pub snapshot: i64,
    /// Registered tables, in name order.
    pub tables: Vec<String>,
    spill: Option<Arc<spill::EncryptedSpill>>,
}

/// The tables of one snapshot, ready to be registered in any session that
/// has the same storage and keys.
pub struct OpenSnapshot {
    /// Snapshot id.
    pub id: i64,
    /// The decryption factory holding the snapshot's data key.
    pub keys: SnapshotKeys,
    /// Tables by name, in name order.
    pub tables: Vec<(String, Arc<ListingTable>)>,
    /// Rows of each table, from the catalogue (for join ordering).
    pub rows: HashMap<String, i64>,
    /// Decrypted Parquet metadata of the snapshot's files, shared by every
    /// session over it.
    pub footers: Arc<footers::FooterCache>,
    /// The dictionary of identifier numbers, when the snapshot's tables
    /// carry them ([`ids`]); read on first use.
    pub identifiers: Option<Arc<ids::IdDictionary>>,
}

impl std::fmt::Debug for OpenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSnapshot")
            .field("id", &self.id)
            .field(
                "tables",
                &self.tables.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Opens `snapshot` (the latest when `None`) of the `snds` dataset: unwraps
/// its data key with the master key and builds one table per catalogue
/// table from the catalogue's file list.
pub async fn open_snapshot(
    cat: &pds_catalog::Catalog,
    keys: &pds_keys::KeyStore,
    storage: &pds_storage::Storage,
    snapshot: Option<i64>,
) -> Result<OpenSnapshot, QueryError> {
    let info = match snapshot {
        Some(id) => cat.snapshot(id).await.map_err(|e| match e {
            pds_catalog::CatalogError::NoSnapshot(_) => QueryError::Snapshot(format!(
                "snapshot {id} does not exist; `pds snapshots` lists the existing ones"
            )),
            e => e.into(),
        })?,
        None => cat.latest("snds").await.map_err(|e| match e {
            pds_catalog::CatalogError::Empty(_) => QueryError::Snapshot(
                "the home holds no snapshot yet; load a delivery with `pds load DIR`".into(),
            ),
            e => e.into(),
        })?,
    };
    let tables = cat.tables(info.id).await?;
    let wrapped: pds_keys::WrappedKey = serde_json::from_str(&info.wrapped_key)
        .map_err(|e| QueryError::Snapshot(format!("snapshot {}: bad key record: {e}", info.id)))?;
    let key = keys
        .unwrap_data_key(&wrapped, &format!("pds/snapshot/{}", info.id))
        .map_err(|e| {
            QueryError::Snapshot(format!(
                "snapshot {}: {e}. If a `pds keys rotate` was interrupted, run it again with the same new key",
                info.id
            ))
        })?;
    let mut factory = SnapshotKeys::default();
    factory.insert(&info.storage_prefix, key);
    // A scratch session only to read the Parquet footers (schemas).
    let ctx = context(storage.store(), factory.clone(), None, None)?;
    let footers = Arc::new(footers::FooterCache::from_env().map_err(QueryError::Snapshot)?);
    let mut out = Vec::new();
    for t in &tables {
        let urls = t
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{STORE_URL}/{}", f.path)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(df)?;
        if urls.is_empty() {
            continue;
        }
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(listing_options(footers.clone()))
            .infer_schema(&ctx.state())
            .await
            .map_err(df)?;
        out.push((
            t.name.clone(),
            Arc::new(ListingTable::try_new(config).map_err(df)?),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Snapshots loaded before identifiers were numbered have no number
    // column and no dictionary; the gate then works on the identifiers.
    let numbered = out.iter().any(|(_, t)| {
        datafusion::datasource::TableProvider::schema(t.as_ref())
            .fields()
            .iter()
            .any(|f| pds_snds::identifiers::numbered_column(f.name()).is_some())
    });
    let identifiers = numbered.then(|| {
        Arc::new(ids::IdDictionary::new(
            info.id,
            &info.storage_prefix,
            ctx,
            footers.clone(),
        ))
    });
    Ok(OpenSnapshot {
        id: info.id,
        keys: factory,
        tables: out,
        rows: tables.iter().map(|t| (t.name.clone(), t.rows)).collect(),
        footers,
        identifiers,
    })
}

impl OpenSnapshot {
    /// Adds PDS's join rules to a session over this snapshot: the join
    /// order from its statistics ([`joins::FilteredReferentialFirst`]) and
    /// the nine-key DCIR join on the prestation key
    /// ([`prskey::PrestationKeyJoin`]). `PDS_JOIN_ORDER=written` and
    /// `PDS_PRESTATION_KEY=off` leave each out (to compare plans).
    pub fn add_join_order(&self, ctx: &SessionContext) {
        if !std::env::var("PDS_JOIN_ORDER").is_ok_and(|v| v == "written") {
            ctx.add_optimizer_rule(Arc::new(joins::FilteredReferentialFirst::new(
                self.rows.clone(),
            )));
        }
        if !std::env::var("PDS_PRESTATION_KEY").is_ok_and(|v| v == "off") {
            ctx.add_optimizer_rule(Arc::new(prskey::PrestationKeyJoin));
        }
    }
}

impl SnapshotSession {
    /// Opens `snapshot` (the latest when `None`) of the home's `snds`
    /// dataset with every table registered. This is raw, whole-snapshot
    /// access for the gate's operator path and for benchmarks; projects
    /// never get it.
    pub async fn open(home: &Home, snapshot: Option<i64>) -> Result<SnapshotSession, QueryError> {
        SnapshotSession::open_with(home, snapshot, None, None).await
    }

    /// [`SnapshotSession::open`] with its memory bounded by `pool` and its
    /// operators spilling through `spill` (see [`context`]).
    pub async fn open_with(
        home: &Home,
        snapshot: Option<i64>,
        pool: Option<Arc<dyn MemoryPool>>,
        spill: Option<Arc<spill::EncryptedSpill>>,
    ) -> Result<SnapshotSession, QueryError> {
        let cat = home.catalog().await?;
        let keys = home.keys()?;
        let storage = home.storage()?;
        let open = open_snapshot(&cat, &keys, &storage, snapshot).await;
        cat.close().await;
        let open = open?;
        let spill_of_session = spill.clone();
        let ctx = context(storage.store(), open.keys.clone(), pool, spill)?;
        open.add_join_order(&ctx);
        let mut names = Vec::new();
        for (name, table) in &open.tables {
            // `bare` keeps the case; a `&str` would be parsed and folded to lower case.
            ctx.register_table(TableReference::bare(name.as_str()), table.clone())
                .map_err(df)?;
            names.push(name.clone());
        }
        Ok(SnapshotSession {
            ctx,
            snapshot: open.id,
            tables: names,
            spill: spill_of_session,
        })
    }

    /// Where this session's operators spill, if they do.
    pub fn spill(&self) -> Option<&spill::EncryptedSpill> {
        self.spill.as_deref()
    }

    /// Runs one read-only statement and collects its result.
    pub async fn sql(&self, text: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let frame = self
            .ctx
            .sql_with_options(text, read_only())
            .await
            .map_err(|e| QueryError::Sql(explain(e, &self.tables)))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(df)?;
        Ok((schema, batches))
    }
}

/// Adds the hint a user needs to the most common planning errors.
fn explain(e: datafusion::error::DataFusionError, tables: &[String]) -> String {
    let msg = e.to_string();
    if msg.contains("not found") && msg.contains("table") {
        format!(
            "{msg}\nhint: table names are upper case, as in the SNDS documentation; this snapshot has: {}",
            tables.join(", ")
        )
    } else if msg.contains("No field named") {
        format!(
            "{msg}\nhint: column names are upper case (BEN_NIR_PSA, not ben_nir_psa); `pds tables --columns` lists them"
        )
    } else if msg.contains("not supported") || msg.contains("Unsupported") {
        format!("{msg}\nhint: `pds sql` is read-only: SELECT, WITH, EXPLAIN, SHOW")
    } else {
        msg
    }
}

/// How snapshot files are read: Parquet, decrypted by [`SnapshotKeys`],
/// with their metadata kept in `footers` (one cache per open snapshot).
pub fn listing_options(footers: Arc<footers::FooterCache>) -> ListingOptions {
    let mut opts = TableParquetOptions::default();
    // The format's own options are what its scans use (not the session's),
    // so the operator's `DATAFUSION_EXECUTION_PARQUET_*` settings are read
    // here; an unreadable one is reported when the session is built.
    if let Ok(env) = datafusion::config::ConfigOptions::from_env() {
        opts.global = env.execution.parquet;
    }
    opts.crypto.factory_id = Some(FACTORY_ID.to_string());
    let parquet = ParquetFormat::default().with_options(opts);
    ListingOptions::new(Arc::new(footers::SnapshotFormat::new(parquet, footers)))
        .with_file_extension(".parquet")
}

/// A session whose only storage is `store` and whose only keys are `keys`.
///
/// `pool` bounds its memory (DataFusion's unbounded pool when `None`).
/// Operators that outgrow it spill through `spill` only
/// ([`spill::EncryptedSpill`]: encrypted, unnamed files); with `None` the
/// disk manager is disabled and they fail instead. DataFusion's own spill
/// files are never used: they would hold decrypted data in clear.
pub fn context(
    store: Arc<dyn object_store::ObjectStore>,
    keys: SnapshotKeys,
    pool: Option<Arc<dyn MemoryPool>>,
    spill: Option<Arc<spill::EncryptedSpill>>,
) -> Result<SessionContext, QueryError> {
    let registry = DefaultObjectStoreRegistry::new();
    // DataFusion pre-registers the local file system: take it out, so no
    // statement can read a file that is not part of the snapshot.
    let local = url::Url::parse("file://").map_err(|e| QueryError::Sql(e.to_string()))?;
    let _ = registry.deregister_store(&local);
    let ours = url::Url::parse(STORE_URL).map_err(|e| QueryError::Sql(e.to_string()))?;
    registry.register_store(&ours, store);
    // Each session spills through its own factory (same directory and
    // quota), whose counters say what this session's statement spilled.
    let spill = spill.map(|s| Arc::new(s.statement()));
    let counters = spill.as_ref().map(|s| s.shared_counters());
    let disk = match spill {
        Some(factory) => DiskManagerBuilder::default().with_temp_file_factory(factory),
        None => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
    };
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(registry))
        .with_disk_manager_builder(disk);
    if let Some(pool) = pool {
        builder = builder.with_memory_pool(pool);
    }
    let runtime = builder.build_arc().map_err(df)?;
    runtime.register_parquet_encryption_factory(FACTORY_ID, Arc::new(keys));
    // DataFusion's own settings may be tuned by the operator through its
    // `DATAFUSION_*` environment variables (`docs/performance.md`); the ones
    // PDS depends on are set after.
    let mut config = SessionConfig::from_env()
        .map_err(df)?
        .with_information_schema(true);
    if let Some(c) = counters {
        config = config.with_extension(c);
    }
    config.options_mut().sql_parser.enable_ident_normalization = false;
    // Not overridable: a repartition that spills closes its spill file after
    // every batch. DataFusion 55's repartition spill pool reads only its
    // oldest file; with two files left open (two input tasks spilling at
    // once) its reader can wait on the oldest while the batch it needs is in
    // the other, and the statement hangs with every thread parked
    // (apache/datafusion#24883, fixed after 55.2). A file finished within
    // the write that made it never leaves the reader waiting. Only the
    // repartition reads this setting, and it spills only under memory
    // pressure, so the extra files cost little.
    config.options_mut().execution.max_spill_file_size_bytes =
        datafusion::common::config::ConfigNonZeroUsize::try_new(1).map_err(df)?;
    // PDS's defaults, each overridable by its `DATAFUSION_*` variable:
    // build one shared hash table (no repartitioning of the probe side)
    // for a build side of up to 32 MiB or 1 Mi rows rather than 1 MiB or
    // 128 Ki rows. At two to a few dozen partitions, repartitioning a
    // million-row probe side costs more than building a small table once
    // (SNDS-bench q09: 103 ms to 76 ms; `docs/performance.md`).
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD").is_none() {
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold = 32 << 20;
    }
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD_ROWS").is_none()
    {
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold_rows = 1 << 20;
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        // After the defaults, which add them: no CREATE EXTERNAL TABLE formats.
        .with_table_factories(HashMap::new())
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Output formats of [`format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Renders a result.
pub fn format(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    f: Format,
) -> Result<String, QueryError> {
    let out = |e: arrow::error::ArrowError| QueryError::Output(e.to_string());
    match f {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Ok(format!("{}\n(0 rows)\n", names.join(" | ")));
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let table = arrow::util::pretty::pretty_format_batches(batches).map_err(out)?;
            Ok(format!(
                "{table}\n({rows} row{})\n",
                if rows == 1 { "" } else { "s" }
            ))
        }
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone()))
                        .map_err(out)?;
                }
                for b in batches {
                    w.write(b).map_err(out)?;
                }
            }
            String::from_utf8(buf).map_err(|e| QueryError::Output(e.to_string()))
        }
        Format::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut buf);
                for b in batches {
                    w.write(b).map_err(out)?;
                }
                w.finish().map_err(out)?;
            }
            let mut s = String::from_utf8(buf).map_err(|e| QueryError::Output(e.to_string()))?;
            if s.is_empty() {
                s.push_str("[]");
            }
            s.push('\n');
            Ok(s)
        }
    }
}
