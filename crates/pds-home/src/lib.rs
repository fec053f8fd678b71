//! The PDS data home: one directory that holds a platform's configuration,
//! key store, catalogue (SQLite by default) and local object store.
//!
//! ```text
//! pds-home/
//!   config.toml      documented configuration, every option with its default
//!   keys/            key store (master key never stored here)
//!   catalogue.db     SQLite catalogue (unless catalogue.url points elsewhere)
//!   objects/         local object store (unless storage.url points elsewhere)
//! ```
//!
//! Relative paths in `config.toml` are relative to the home, so a home can be
//! moved as a whole.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use pds_catalog::Catalog;
use pds_keys::{KeyStore, MasterSource};
use pds_storage::{S3Options, Storage};
use serde::{Deserialize, Serialize};

/// Name of the configuration file.
pub const CONFIG_FILE: &str = "config.toml";

/// Errors about the home.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// `pds init` on a directory that already holds something.
    #[error(
        "{0} already exists and is not empty; refusing to overwrite it (choose another --home)"
    )]
    Exists(PathBuf),
    /// Opening a directory that is not a home.
    #[error("{0} is not a PDS home (no config.toml): create one with `pds init --home {0}`")]
    NotAHome(PathBuf),
    /// The configuration does not parse or has a bad value.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column when known.
        reason: String,
    },
    /// Another process holds the write lock.
    #[error("{0}")]
    Busy(String),
    /// Storage error.
    #[error(transparent)]
    Storage(#[from] pds_storage::StorageError),
    /// Key store error.
    #[error(transparent)]
    Keys(#[from] pds_keys::KeyError),
    /// Catalogue error.
    #[error(transparent)]
    Catalog(#[from] pds_catalog::CatalogError),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `[catalogue]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// `sqlite://catalogue.db` (relative to the home) or `postgres://...`.
    #[serde(default = "default_catalogue_url")]
    pub url: String,
}

/// `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `file://objects` (relative to the home) or `s3://bucket/prefix`.
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// S3 endpoint for S3-compatible stores (Garage, MinIO, Ceph...).
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[serde(default)]
    pub s3_region: Option<String>,
}

/// How the master key is given at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MasterKind {
    /// A key file (64 hex characters), path in `master_key_file`.
    KeyFile,
    /// A passphrase from the `PDS_MASTER_PASSPHRASE` environment variable.
    Passphrase,
}

/// `[keys]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Key store directory.
    #[serde(default = "default_keys_dir")]
    pub dir: String,
    /// How the master key is given.
    pub master: MasterKind,
    /// Master key file, when `master = "key-file"`. Keep it off the data disk.
    #[serde(default)]
    pub master_key_file: Option<String>,
}

/// `[load]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Abort a load after this many rejected values.
    #[serde(default = "default_max_errors")]
    pub max_errors: u64,
    /// Converter and encoder threads (each); 0 = one per core.
    #[serde(default)]
    pub threads: u64,
    /// Codec of the Parquet files written (new snapshots only).
    #[serde(default)]
    pub compression: Compression,
}

/// `load.compression`: codec of the Parquet files a load writes. PDS reads
/// both; changing it affects the snapshots loaded afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 (the raw Parquet codec): scans decode several times faster;
    /// files about a third larger. The default: analyses read a few
    /// columns and spend much of their time decoding them.
    #[default]
    Lz4,
    /// zstd level 1: the smallest files, slower scans.
    Zstd,
}

impl Compression {
    /// The name written in config.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Parses the config.toml name (for `pds load --compression`).
impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!("unknown codec {other:?}; choose lz4 or zstd")),
        }
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            max_errors: default_max_errors(),
            threads: 0,
            compression: Compression::default(),
        }
    }
}

/// `[gate]` section: limits of every statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Statement timeout, seconds.
    #[serde(default = "default_timeout")]
    pub statement_timeout_secs: u64,
    /// Memory one statement may use, MiB.
    #[serde(default = "default_query_memory")]
    pub query_memory_mib: u64,
    /// Memory all running statements together may use, MiB.
    #[serde(default = "default_total_memory")]
    pub total_memory_mib: u64,
    /// Rows one statement may return.
    #[serde(default = "default_max_rows")]
    pub max_result_rows: u64,
    /// Statements running at once.
    #[serde(default = "default_concurrent")]
    pub max_concurrent_statements: u64,
    /// Disk space all running statements together may use for their
    /// encrypted spill files, MiB; 0 turns spilling off.
    #[serde(default = "default_max_spill")]
    pub max_spill_mib: u64,
    /// Directory of the spill files (relative to the home).
    #[serde(default = "default_spill_dir")]
    pub spill_dir: String,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            statement_timeout_secs: default_timeout(),
            query_memory_mib: default_query_memory(),
            total_memory_mib: default_total_memory(),
            max_result_rows: default_max_rows(),
            max_concurrent_statements: default_concurrent(),
            max_spill_mib: default_max_spill(),
            spill_dir: default_spill_dir(),
        }
    }
}

/// `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log's name in its signed checkpoints.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// A checkpoint is signed when the last one is older than this, minutes.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_interval_minutes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: default_origin(),
            checkpoint_interval_minutes: default_checkpoint_minutes(),
        }
    }
}

/// `[serve]` section: the network front-ends of `pds serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// PostgreSQL wire protocol listener.
    #[serde(default = "default_pg_listen")]
    pub pg_listen: String,
    /// Arrow Flight SQL listener.
    #[serde(default = "default_flight_listen")]
    pub flight_listen: String,
    /// HTTP API listener.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// TLS certificate chain (PEM), relative to the home unless absolute.
    #[serde(default = "default_tls_cert")]
    pub tls_cert: String,
    /// TLS private key (PEM), relative to the home unless absolute.
    #[serde(default = "default_tls_key")]
    pub tls_key: String,
    /// Lifetime of the access tokens of a session, minutes (refresh tokens
    /// renew them within `[identity]` limits).
    #[serde(default = "default_token_minutes")]
    pub token_ttl_minutes: u64,
    /// Connections at once, per listener.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            pg_listen: default_pg_listen(),
            flight_listen: default_flight_listen(),
            http_listen: default_http_listen(),
            tls_cert: default_tls_cert(),
            tls_key: default_tls_key(),
            token_ttl_minutes: default_token_minutes(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_pg_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_flight_listen() -> String {
    "127.0.0.1:8815".into()
}
fn default_http_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_tls_cert() -> String {
    "tls/server.crt".into()
}
fn default_tls_key() -> String {
    "tls/server.key".into()
}
fn default_token_minutes() -> u64 {
    15
}
fn default_max_connections() -> u64 {
    256
}

fn default_timeout() -> u64 {
    300
}
fn default_query_memory() -> u64 {
    2048
}
fn default_total_memory() -> u64 {
    8192
}
fn default_max_rows() -> u64 {
    10_000_000
}
fn default_concurrent() -> u64 {
    4
}
fn default_max_spill() -> u64 {
    32 * 1024
}
fn default_spill_dir() -> String {
    "spill".into()
}
fn default_origin() -> String {
    "pds.local/audit".into()
}
fn default_checkpoint_minutes() -> u64 {
    60
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Catalogue.
    pub catalogue: CatalogueConfig,
    /// Object storage.
    pub storage: StorageConfig,
    /// Keys.
    pub keys: KeysConfig,
    /// Loading.
    #[serde(default)]
    pub load: LoadConfig,
    /// Statement limits.
    #[serde(default)]
    pub gate: GateConfig,
    /// Audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Network front-ends.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Sign-in: second factor, lockout, sessions, identity providers.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Export requests.
    #[serde(default)]
    pub airlock: AirlockConfig,
}

/// `[airlock]` section: what an export request may hold and how a
/// released file may be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AirlockConfig {
    /// Largest file, MiB.
    pub max_file_mib: u64,
    /// Most rows of a table (CSV, Parquet).
    pub max_rows: u64,
    /// Downloads of a released file.
    pub max_downloads: u64,
    /// Lifetime of a download link, minutes.
    pub link_minutes: u64,
}

impl Default for AirlockConfig {
    fn default() -> Self {
        AirlockConfig {
            max_file_mib: 16,
            max_rows: 5_000,
            max_downloads: 3,
            link_minutes: 15,
        }
    }
}

/// `[identity]` section: how people and programs sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// A session not refreshed for this long ends, minutes.
    #[serde(default = "default_idle")]
    pub session_idle_minutes: u64,
    /// A session ends this long after sign-in, minutes.
    #[serde(default = "default_session_max")]
    pub session_max_minutes: u64,
    /// Failed sign-ins allowed before the first lock.
    #[serde(default = "default_lock_after")]
    pub lock_after_failures: u32,
    /// First lock, seconds; it doubles with each further failure.
    #[serde(default = "default_lock_base")]
    pub lock_base_seconds: u64,
    /// Longest lock, minutes.
    #[serde(default = "default_lock_max")]
    pub lock_max_minutes: u64,
    /// Sign-in attempts per minute from one address (HTTP, PostgreSQL, Flight SQL).
    #[serde(default = "default_attempts")]
    pub login_attempts_per_minute: u32,
    /// TOTP hash: `SHA256` or `SHA512` (SHA-1 is banned by the crypto policy).
    #[serde(default = "default_totp_alg")]
    pub totp_algorithm: String,
    /// Name shown in authenticator apps.
    #[serde(default = "default_totp_issuer")]
    pub totp_issuer: String,
    /// Longest life of a service API token, days.
    #[serde(default = "default_service_days")]
    pub service_token_max_days: u64,
    /// OpenID Connect identity providers (`[[identity.oidc]]`).
    #[serde(default)]
    pub oidc: Vec<pds_oidc::ProviderConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            session_idle_minutes: default_idle(),
            session_max_minutes: default_session_max(),
            lock_after_failures: default_lock_after(),
            lock_base_seconds: default_lock_base(),
            lock_max_minutes: default_lock_max(),
            login_attempts_per_minute: default_attempts(),
            totp_algorithm: default_totp_alg(),
            totp_issuer: default_totp_issuer(),
            service_token_max_days: default_service_days(),
            oidc: Vec::new(),
        }
    }
}

fn default_idle() -> u64 {
    20
}
fn default_session_max() -> u64 {
    600
}
fn default_lock_after() -> u32 {
    5
}
fn default_lock_base() -> u64 {
    30
}
fn default_lock_max() -> u64 {
    60
}
fn default_attempts() -> u32 {
    30
}
fn default_totp_alg() -> String {
    "SHA256".into()
}
fn default_totp_issuer() -> String {
    "PDS".into()
}
fn default_service_days() -> u64 {
    366
}

fn default_catalogue_url() -> String {
    "sqlite://catalogue.db".into()
}
fn default_storage_url() -> String {
    "file://objects".into()
}
fn default_keys_dir() -> String {
    "keys".into()
}
fn default_max_errors() -> u64 {
    100
}

/// How `pds init` protects the master key.
#[derive(Debug, Clone)]
pub enum InitMaster {
    /// Use (or create, mode 0600) this key file.
    KeyFile(PathBuf),
    /// Use this passphrase (given later through `PDS_MASTER_PASSPHRASE`).
    Passphrase(String),
}

fn render(c: &Config) -> String {
    let key_file = match &c.keys.master_key_file {
        Some(p) => format!("master_key_file = {}\n", toml_str(p)),
        None => "# master_key_file = \"/secure/place/pds-master.key\"\n".into(),
    };
    let s3 = format!(
        "{}{}",
        match &c.storage.s3_endpoint {
            Some(e) => format!("s3_endpoint = {}\n", toml_str(e)),
            None => "# s3_endpoint = \"https://s3.example.org\"   # for S3-compatible stores (default: none, AWS rules)\n".into(),
        },
        match &c.storage.s3_region {
            Some(r) => format!("s3_region = {}\n", toml_str(r)),
            None => "# s3_region = \"fr-par\"                     # (default: none)\n".into(),
        }
    );
    format!(
        r#"# PDS configuration. Every option is listed with its default value.
# Relative paths are relative to this home directory.

[catalogue]
# Where the catalogue (datasets, snapshots, tables, columns, files) lives:
#   sqlite://catalogue.db               embedded SQLite file (default)
#   postgres://user@host:5432/database  PostgreSQL, for shared or clustered use
url = {catalogue}

[storage]
# Where data files (encrypted Parquet) are written:
#   file://objects          a local folder (default)
#   s3://bucket/prefix      an S3-compatible store (Garage, MinIO, Ceph, SecNumCloud providers)
url = {storage}
{s3}# S3 credentials are never written here: PDS reads AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (or the instance metadata service) from its environment.

[keys]
# Key store directory (wrapped platform key and check value; never the master key).
dir = {dir}
# How the master key is given when PDS starts:
#   "key-file"    a file of 64 hexadecimal characters (master_key_file below)
#   "passphrase"  the PDS_MASTER_PASSPHRASE environment variable (Argon2id)
master = {master}
{key_file}
[load]
# A load stops after this many rejected values (every one is reported).
max_errors = {max_errors}
# Threads that check and convert, and threads that encode and encrypt (each);
# 0 means one per core.
threads = {threads}
# Codec of the Parquet files a load writes (snapshots already loaded keep theirs):
#   "lz4"   scans decode several times faster; files about a third larger (default)
#   "zstd"  the smallest files, slower scans
compression = {compression}

[gate]
# Limits of every statement, whatever the front-end. A statement that hits
# one fails with an error naming the limit; nothing else is affected.
statement_timeout_secs = {timeout}
query_memory_mib = {qmem}
# All running statements together.
total_memory_mib = {tmem}
max_result_rows = {rows}
max_concurrent_statements = {conc}
# Sorts, aggregations, repartitions and joins that outgrow query_memory_mib
# write the excess to spill files: unnamed (gone when the statement ends,
# even on a crash) and encrypted with a key that exists only in memory (a
# hash join cannot spill: its statement runs again with sort-merge joins).
# Disk space of all running statements' spill files, MiB (0: no spilling;
# such statements fail):
max_spill_mib = {spill}
spill_dir = {spilldir}

[audit]
# The log's name in its signed checkpoints (C2SP signed notes).
origin = {origin}
# A checkpoint is signed when there is activity and the last one is older
# than this; `pds audit checkpoint` signs one on demand.
checkpoint_interval_minutes = {cpm}

[serve]
# Listeners of `pds serve` (loopback by default; PostgreSQL itself keeps 5432).
pg_listen = {pg}
flight_listen = {flight}
http_listen = {http}
# TLS for every listener (PEM files, relative to this directory). If they
# cannot be loaded, `pds serve` refuses to start; `pds tls self-signed`
# writes a certificate for local testing.
tls_cert = {cert}
tls_key = {key}
# Lifetime of a session's access tokens (renewed with its refresh token),
# and connections per listener.
token_ttl_minutes = {ttl}
max_connections = {maxconn}

[identity]
# People sign in with a password and a TOTP code (mandatory; enrolled at the
# first sign-in) or through an identity provider below; programs use scoped
# service tokens (`pds user token`).
session_idle_minutes = {idle}
session_max_minutes = {smax}
# Failed sign-ins lock the name: after `lock_after_failures`, for
# `lock_base_seconds`, doubling at each further failure up to `lock_max_minutes`.
lock_after_failures = {lafter}
lock_base_seconds = {lbase}
lock_max_minutes = {lmax}
login_attempts_per_minute = {attempts}
totp_algorithm = {totpalg}
totp_issuer = {totpiss}
service_token_max_days = {sdays}

# An identity provider (see docs/identity.md). Pro Santé Connect:
# [[identity.oidc]]
# name = "psc"
# profile = "pro-sante-connect"
# issuer = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
# client_id = "your-client-id"
# client_secret_env = "PDS_PSC_CLIENT_SECRET"
# redirect_uri = "https://pds.example.org/api/v1/oidc/psc/callback"
"#,
        pg = toml_str(&c.serve.pg_listen),
        flight = toml_str(&c.serve.flight_listen),
        http = toml_str(&c.serve.http_listen),
        cert = toml_str(&c.serve.tls_cert),
        key = toml_str(&c.serve.tls_key),
        ttl = c.serve.token_ttl_minutes,
        maxconn = c.serve.max_connections,
        idle = c.identity.session_idle_minutes,
        smax = c.identity.session_max_minutes,
        lafter = c.identity.lock_after_failures,
        lbase = c.identity.lock_base_seconds,
        lmax = c.identity.lock_max_minutes,
        attempts = c.identity.login_attempts_per_minute,
        totpalg = toml_str(&c.identity.totp_algorithm),
        totpiss = toml_str(&c.identity.totp_issuer),
        sdays = c.identity.service_token_max_days,
        timeout = c.gate.statement_timeout_secs,
        qmem = c.gate.query_memory_mib,
        tmem = c.gate.total_memory_mib,
        rows = c.gate.max_result_rows,
        conc = c.gate.max_concurrent_statements,
        spill = c.gate.max_spill_mib,
        spilldir = toml_str(&c.gate.spill_dir),
        origin = toml_str(&c.audit.origin),
        cpm = c.audit.checkpoint_interval_minutes,
        catalogue = toml_str(&c.catalogue.url),
        storage = toml_str(&c.storage.url),
        dir = toml_str(&c.keys.dir),
        master = toml_str(match c.keys.master {
            MasterKind::KeyFile => "key-file",
            MasterKind::Passphrase => "passphrase",
        }),
        max_errors = c.load.max_errors,
        s3 = s3,
        threads = c.load.threads,
        compression = toml_str(c.load.compression.as_str()),
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An opened home.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory.
    pub root: PathBuf,
    /// Its configuration.
    pub config: Config,
}

impl Home {
    /// Creates a home: configuration, key store, catalogue and object folder.
    ///
    /// Refuses a directory that exists and is not empty. On failure, what was
    /// created is removed.
    pub async fn init(root: &Path, master: &InitMaster) -> Result<Home, HomeError> {
        if root.exists() {
            let mut entries = fs::read_dir(root).map_err(io(root))?;
            if entries.next().is_some() {
                return Err(HomeError::Exists(root.to_path_buf()));
            }
        }
        let created_root = !root.exists();
        let result = Self::init_inner(root, master).await;
        if result.is_err() {
            // Leave nothing half-made behind.
            if created_root {
                let _ = fs::remove_dir_all(root);
            } else if let Ok(entries) = fs::read_dir(root) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
        }
        result
    }

    async fn init_inner(root: &Path, master: &InitMaster) -> Result<Home, HomeError> {
        fs::create_dir_all(root).map_err(io(root))?;
        let (kind, key_file, source) = match master {
            InitMaster::KeyFile(p) => {
                let abs = if p.is_absolute() {
                    p.clone()
                } else {
                    std::env::current_dir().map_err(io(p))?.join(p)
                };
                if !abs.exists() {
                    MasterSource::create_key_file(&abs)?;
                }
                (
                    MasterKind::KeyFile,
                    Some(abs.display().to_string()),
                    MasterSource::KeyFile(abs),
                )
            }
            InitMaster::Passphrase(p) => (
                MasterKind::Passphrase,
                None,
                MasterSource::Passphrase(p.clone()),
            ),
        };
        let config = Config {
            catalogue: CatalogueConfig {
                url: default_catalogue_url(),
            },
            storage: StorageConfig {
                url: default_storage_url(),
                s3_endpoint: None,
                s3_region: None,
            },
            keys: KeysConfig {
                dir: default_keys_dir(),
                master: kind,
                master_key_file: key_file,
            },
            load: LoadConfig::default(),
            gate: GateConfig::default(),
            audit: AuditConfig::default(),
            serve: ServeConfig::default(),
            identity: IdentityConfig::default(),
            airlock: AirlockConfig::default(),
        };
        let home = Home {
            root: root.to_path_buf(),
            config,
        };
        KeyStore::create(&home.keys_dir(), &source)?;
        // Opening the storage creates the local object folder.
        home.storage()?;
        let cat = Catalog::connect(&home.catalogue_url()).await?;
        cat.ensure_dataset("snds", "Système national des données de santé (SNDS)")
            .await?;
        cat.close().await;
        let cfg_path = root.join(CONFIG_FILE);
        fs::write(&cfg_path, render(&home.config)).map_err(io(&cfg_path))?;
        Ok(home)
    }

    /// Opens an existing home and checks its configuration.
    pub fn open(root: &Path) -> Result<Home, HomeError> {
        let path = root.join(CONFIG_FILE);
        if !path.exists() {
            return Err(HomeError::NotAHome(root.to_path_buf()));
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let config: Config = toml::from_str(&text).map_err(|e| HomeError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if config.keys.master == MasterKind::KeyFile && config.keys.master_key_file.is_none() {
            return Err(HomeError::Config {
                path,
                reason: "keys.master = \"key-file\" needs keys.master_key_file".into(),
            });
        }
        let u = &config.catalogue.url;
        if !(u.starts_with("sqlite://")
            || u.starts_with("postgres://")
            || u.starts_with("postgresql://"))
        {
            return Err(HomeError::Config {
                path,
                reason: format!("catalogue.url `{u}` must start with sqlite:// or postgres://"),
            });
        }
        let s = &config.storage.url;
        if !(s.starts_with("file://") || s.starts_with("s3://")) {
            return Err(HomeError::Config {
                path,
                reason: format!("storage.url `{s}` must start with file:// or s3://"),
            });
        }
        Ok(Home {
            root: root.to_path_buf(),
            config,
        })
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The key store directory.
    pub fn keys_dir(&self) -> PathBuf {
        self.resolve(&self.config.keys.dir)
    }

    /// The directory of the gate's encrypted spill files.
    pub fn spill_dir(&self) -> PathBuf {
        self.resolve(&self.config.gate.spill_dir)
    }

    /// The catalogue URL with relative SQLite paths resolved.
    pub fn catalogue_url(&self) -> String {
        match self.config.catalogue.url.strip_prefix("sqlite://") {
            Some(p) => format!("sqlite://{}", self.resolve(p).display()),
            None => self.config.catalogue.url.clone(),
        }
    }

    /// The local object store folder, when storage is local.
    pub fn local_storage_dir(&self) -> Option<PathBuf> {
        self.config
            .storage
            .url
            .strip_prefix("file://")
            .map(|p| self.resolve(p))
    }

    /// The master key source described by the configuration.
    ///
    /// A passphrase is read from `PDS_MASTER_PASSPHRASE`.
    pub fn master_source(&self) -> Result<MasterSource, HomeError> {
        match self.config.keys.master {
            MasterKind::KeyFile => {
                let p = self
                    .config
                    .keys
                    .master_key_file
                    .as_deref()
                    .unwrap_or_default();
                Ok(MasterSource::KeyFile(self.resolve(p)))
            }
            MasterKind::Passphrase => std::env::var("PDS_MASTER_PASSPHRASE")
                .map(MasterSource::Passphrase)
                .map_err(|_| HomeError::Config {
                    path: self.root.join(CONFIG_FILE),
                    reason: "keys.master = \"passphrase\": set PDS_MASTER_PASSPHRASE".into(),
                }),
        }
    }

    /// Opens the key store.
    pub fn keys(&self) -> Result<KeyStore, HomeError> {
        Ok(KeyStore::open(&self.keys_dir(), &self.master_source()?)?)
    }

    /// Connects to the catalogue.
    pub async fn catalog(&self) -> Result<Catalog, HomeError> {
        Ok(Catalog::connect(&self.catalogue_url()).await?)
    }

    /// Records a new master-key protection in `config.toml` (after a key
    /// rotation). The file is replaced atomically; other settings are kept
    /// (comments are regenerated).
    pub fn set_master(&mut self, master: &InitMaster) -> Result<(), HomeError> {
        match master {
            InitMaster::KeyFile(p) => {
                let abs = if p.is_absolute() {
                    p.clone()
                } else {
                    std::env::current_dir().map_err(io(p))?.join(p)
                };
                self.config.keys.master = MasterKind::KeyFile;
                self.config.keys.master_key_file = Some(abs.display().to_string());
            }
            InitMaster::Passphrase(_) => {
                self.config.keys.master = MasterKind::Passphrase;
                self.config.keys.master_key_file = None;
            }
        }
        let path = self.root.join(CONFIG_FILE);
        let tmp = self.root.join(format!("{CONFIG_FILE}.new"));
        {
            use std::io::Write;
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(render(&self.config).as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(d) = fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Opens the object store of `storage.url`.
    pub fn storage(&self) -> Result<Storage, HomeError> {
        let s3 = S3Options {
            endpoint: self.config.storage.s3_endpoint.clone(),
            region: self.config.storage.s3_region.clone(),
        };
        Ok(Storage::open(&self.config.storage.url, &self.root, &s3)?)
    }

    /// Takes the home's exclusive lock for writers (loads, key rotation):
    /// two loads never race on the same next snapshot or sweep each other's
    /// files. The operating system releases it when the process ends, even
    /// on SIGKILL, so a crash never leaves a stale lock.
    pub fn lock_for_writing(&self, what: &str) -> Result<HomeLock, HomeError> {
        let path = self.root.join(".write.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(HomeError::Busy(format!(
                "another PDS process is writing to {} (load or key rotation); {what} waits for it to finish: try again later",
                self.root.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(HomeError::Io { path, source: e }),
        }
    }
}

/// Held while a process writes to the home; released on drop or exit.
#[derive(Debug)]
pub struct HomeLock {
    _file: fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_creates_a_complete_home_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let key = dir.path().join("master.key");
        let home = Home::init(&root, &InitMaster::KeyFile(key.clone()))
            .await
            .unwrap();
        assert!(key.exists(), "key file created outside the home");
        assert!(
            root.join(CONFIG_FILE).exists()
                && root.join("keys").join(pds_keys::KEYSTORE_FILE).exists()
        );
        assert!(root.join("catalogue.db").exists() && root.join("objects").is_dir());
        let opened = Home::open(&root).unwrap();
        assert_eq!(
            opened.config, home.config,
            "the written config parses back to the same values"
        );
        let ks = opened.keys().unwrap();
        assert!(!ks.uses_passphrase());
        let cat = opened.catalog().await.unwrap();
        assert!(cat.snapshots().await.unwrap().is_empty());
        cat.close().await;
        // Every option is documented with its default.
        let text = fs::read_to_string(root.join(CONFIG_FILE)).unwrap();
        for opt in [
            "url = \"sqlite://catalogue.db\"",
            "url = \"file://objects\"",
            "max_errors = 100",
            "s3_endpoint",
            "master = \"key-file\"",
            "compression = \"lz4\"",
        ] {
            assert!(text.contains(opt), "config lacks {opt}");
        }
        let e = Home::init(&root, &InitMaster::KeyFile(key))
            .await
            .unwrap_err();
        assert!(matches!(e, HomeError::Exists(_)), "{e}");
    }

    #[tokio::test]
    async fn failed_init_leaves_nothing_and_bad_config_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let e = Home::init(&root, &InitMaster::Passphrase("short".into()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("12 characters"), "{e}");
        assert!(!root.exists(), "a failed init leaves no directory");

        let e = Home::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("pds init"), "{e}");
        let home = dir.path().join("h2");
        Home::init(
            &home,
            &InitMaster::Passphrase("a long enough passphrase".into()),
        )
        .await
        .unwrap();
        let cfg = home.join(CONFIG_FILE);
        let text = fs::read_to_string(&cfg).unwrap();
        fs::write(
            &cfg,
            text.replace("max_errors = 100", "max_errors = \"many\""),
        )
        .unwrap();
        let e = Home::open(&home).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("max_errors"), "{e}");
        fs::write(
            &cfg,
            text.replace("compression = \"lz4\"", "compression = \"brotli\""),
        )
        .unwrap();
        let e = Home::open(&home).unwrap_err().to_string();
        assert!(
            e.contains("brotli") && e.contains("lz4") && e.contains("zstd"),
            "the error names the value and the choices: {e}"
        );
        fs::write(
            &cfg,
            text.replace("compression = \"lz4\"", "compression = \"zstd\""),
        )
        .unwrap();
        assert_eq!(
            Home::open(&home).unwrap().config.load.compression,
            Compression::Zstd
        );
        // `pds load --compression` takes the same names.
        for c in [Compression::Lz4, Compression::Zstd] {
            assert_eq!(c.as_str().parse::<Compression>(), Ok(c));
        }
        let e = "brotli".parse::<Compression>().unwrap_err();
        assert!(e.contains("brotli") && e.contains("lz4 or zstd"), "{e}");
        fs::write(&cfg, text.replace("sqlite://catalogue.db", "mysql://x")).unwrap();
        assert!(
            Home::open(&home)
                .unwrap_err()
                .to_string()
                .contains("catalogue.url")
        );
        fs::write(&cfg, text.replace("[load]", "[load]\ntypo = 1")).unwrap();
        assert!(
            Home::open(&home).unwrap_err().to_string().contains("typo"),
            "unknown options are refused"
        );
    }
}
