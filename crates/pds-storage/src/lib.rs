//! Where snapshot files live: a local folder (default) or an S3-compatible
//! store, both behind [`object_store::ObjectStore`].
//!
//! Every path handed to this crate is relative to the storage root
//! (`snapshots/3/ER_PRS_F/flx_month=2021-01/part-0.parquet`). That relative
//! path is also what the loader binds into each encrypted file as AAD, so the
//! same bytes read back under another path fail to decrypt, whatever the
//! back-end.
//!
//! Visibility is not this crate's business: objects become part of a snapshot
//! only when the catalogue commits them. Writers here simply put bytes;
//! [`Storage::remove_unreferenced`] sweeps what an interrupted load left.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path as FsPath;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio_util::io::SyncIoBridge;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The `storage.url` of the configuration cannot be used.
    #[error("storage url `{url}`: {reason}")]
    Config {
        /// The URL as configured.
        url: String,
        /// Why it is refused and what to write instead.
        reason: String,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Writing through the synchronous bridge failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Object path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// S3 settings that are not secrets. Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the
/// instance metadata service), never from the configuration file.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible store (`https://s3.example.org`).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
}

/// An opened object store with its root.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    description: String,
    local_root: Option<std::path::PathBuf>,
}

impl Storage {
    /// Opens `url`: `file://DIR` (relative to `base` unless absolute) or
    /// `s3://bucket[/prefix]`.
    pub fn open(url: &str, base: &FsPath, s3: &S3Options) -> Result<Storage, StorageError> {
        let bad = |reason: &str| StorageError::Config {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(bad("no folder after file:// (e.g. file://objects)"));
            }
            let dir = FsPath::new(dir);
            let root = if dir.is_absolute() {
                dir.to_path_buf()
            } else {
                base.join(dir)
            };
            std::fs::create_dir_all(&root)
                .map_err(|e| bad(&format!("cannot create the folder {}: {e}", root.display())))?;
            let store = LocalFileSystem::new_with_prefix(&root)?;
            return Ok(Storage {
                store: Arc::new(store),
                description: format!("file://{}", root.display()),
                local_root: Some(root),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket after s3:// (e.g. s3://pds-data/prod)"));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(e) = &s3.endpoint {
                url::Url::parse(e)
                    .map_err(|err| bad(&format!("s3_endpoint `{e}` is not a URL: {err}")))?;
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            if let Some(r) = &s3.region {
                b = b.with_region(r);
            }
            let s3store = b.build()?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3store)
            } else {
                Arc::new(Rooted::new(s3store, prefix))
            };
            return Ok(Storage {
                store,
                description: url.to_string(),
                local_root: None,
            });
        }
        Err(bad(
            "unsupported scheme; use file://FOLDER or s3://BUCKET/PREFIX",
        ))
    }

    /// Wraps an existing store (tests, embedding).
    pub fn from_store(store: Arc<dyn ObjectStore>, description: &str) -> Storage {
        Storage {
            store,
            description: description.to_string(),
            local_root: None,
        }
    }

    /// The store, rooted so that paths are relative to the storage root.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The local folder, when the store is one.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &str) -> Result<bytes::Bytes, StorageError> {
        Ok(self.store.get(&Path::from(path)).await?.bytes().await?)
    }

    /// Lists the objects under `prefix` with their sizes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let p = Path::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes everything under `snapshots/` whose snapshot folder is not in
    /// `keep` (left by an interrupted or failed load). Returns how many
    /// folders (local) or objects (S3) were removed. Call it only while holding the home's load lock.
    pub async fn remove_unreferenced(
        &self,
        keep: &BTreeSet<String>,
    ) -> Result<usize, StorageError> {
        if let Some(root) = &self.local_root {
            // Locally, a killed upload also leaves staging files
            // (`part-0.parquet#1`) that listings skip: remove whole folders.
            let dir = root.join("snapshots");
            let mut removed = 0;
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = format!("snapshots/{}", e.file_name().to_string_lossy());
                    if !keep.contains(&name) {
                        let p = e.path();
                        let res = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                        res.map_err(|source| StorageError::Write { path: name, source })?;
                        removed += 1;
                    }
                }
            }
            return Ok(removed);
        }
        // Elsewhere, abandoned multipart uploads are invisible and are
        // reclaimed by the bucket's lifecycle rule (AbortIncompleteMultipartUpload).
        let all = self.list("snapshots").await?;
        let mut removed = 0;
        for (path, _) in all {
            let folder = path.split('/').take(2).collect::<Vec<_>>().join("/");
            if !keep.contains(&folder) {
                match self.store.delete(&Path::from(path.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    /// A synchronous writer for `path`, for code that writes through
    /// `std::io::Write` (the Parquet writer) on a blocking thread. Bytes go
    /// out in parts as they come (multipart upload), so memory stays bounded.
    pub fn writer(&self, path: &str, rt: tokio::runtime::Handle) -> ObjectWriter {
        // Many objects are written at once (one per partition): keep each
        // one's buffered and in-flight bytes small (5 MiB is S3's minimum part).
        let inner = BufWriter::with_capacity(self.store(), Path::from(path), 5 << 20)
            .with_max_concurrency(2);
        ObjectWriter {
            path: path.to_string(),
            bridge: SyncIoBridge::new_with_handle(inner, rt),
            written: 0,
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// `PrefixStore` that also strips the prefix from the metadata of `get`
/// and `head` results. object_store 0.13's `PrefixStore` returns the full
/// key there, so DataFusion, which compares the location it gets back with
/// the one it asked for, would find no file.
#[derive(Debug)]
struct Rooted<T: ObjectStore> {
    inner: PrefixStore<T>,
    prefix: Path,
}

impl<T: ObjectStore> Rooted<T> {
    fn new(store: T, prefix: &str) -> Self {
        Rooted {
            inner: PrefixStore::new(store, prefix),
            prefix: Path::from(prefix),
        }
    }
}

impl<T: ObjectStore> std::fmt::Display for Rooted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl<T: ObjectStore> ObjectStore for Rooted<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let mut r = self.inner.get_opts(location, options).await?;
        let stripped: Option<Path> = r
            .meta
            .location
            .prefix_match(&self.prefix)
            .map(|rest| rest.collect());
        if let Some(p) = stripped {
            r.meta.location = p;
        }
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A blocking writer to one object; [`ObjectWriter::finish`] completes it.
/// Dropped without `finish`, the upload is abandoned and the object does not
/// appear.
pub struct ObjectWriter {
    path: String,
    bridge: SyncIoBridge<BufWriter>,
    written: u64,
}

impl ObjectWriter {
    /// Completes the upload; the object exists once this returns.
    pub fn finish(mut self) -> Result<u64, StorageError> {
        self.bridge
            .shutdown()
            .map_err(|source| StorageError::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(self.written)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.bridge.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // BufWriter uploads in parts on its own; flushing on every Parquet
        // page would send tiny parts.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_store_writes_lists_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open("file://objects", dir.path(), &S3Options::default()).unwrap();
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            for (p, body) in [
                ("snapshots/1/T/part-0.parquet", b"one".as_slice()),
                ("snapshots/2/T/a=1/part-0.parquet", b"two"),
            ] {
                let mut w = s2.writer(p, rt.clone());
                w.write_all(body).unwrap();
                assert_eq!(w.finish().unwrap(), body.len() as u64);
            }
            // An abandoned writer leaves no object.
            let mut w = s2.writer("snapshots/3/T/part-0.parquet", rt);
            w.write_all(b"partial").unwrap();
            drop(w);
        })
        .await
        .unwrap();
        assert_eq!(
            s.list("snapshots").await.unwrap(),
            vec![
                ("snapshots/1/T/part-0.parquet".to_string(), 3),
                ("snapshots/2/T/a=1/part-0.parquet".to_string(), 3)
            ]
        );
        assert_eq!(
            &s.get("snapshots/2/T/a=1/part-0.parquet").await.unwrap()[..],
            b"two"
        );
        let keep = BTreeSet::from(["snapshots/1".to_string()]);
        // Snapshot 2 and the staging file of the abandoned 3, if any, go.
        assert!(s.remove_unreferenced(&keep).await.unwrap() >= 1);
        assert_eq!(s.list("snapshots").await.unwrap().len(), 1);
        assert!(!dir.path().join("objects/snapshots/2").exists());
        assert!(
            dir.path()
                .join("objects/snapshots/1/T/part-0.parquet")
                .exists()
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let o = S3Options::default();
        let e = Storage::open("ftp://x", dir.path(), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use file://FOLDER or s3://BUCKET/PREFIX"), "{e}");
        let e = Storage::open("s3://", dir.path(), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bucket"), "{e}");
        let o = S3Options {
            endpoint: Some("not a url".into()),
            region: None,
        };
        let e = Storage::open("s3://b/p", dir.path(), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a URL"), "{e}");
    }
}
