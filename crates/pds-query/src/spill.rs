//! Encrypted spill files.
//!
//! When a statement's sorts, aggregations or repartitions outgrow its memory,
//! DataFusion writes batches to temporary files and reads them back. Those
//! batches are decrypted snapshot data, so PDS never lets them reach a disk in
//! clear: [`EncryptedSpill`] is the DataFusion [`TempFileFactory`] of every
//! session that may spill, and each file it makes is
//!
//! * **unnamed**: opened with `O_TMPFILE` (or created and unlinked at once
//!   where the file system lacks it), so no other process can open it by
//!   name and the kernel frees it when the statement ends or the process
//!   dies;
//! * **encrypted with its own key** (AES-256-GCM), drawn from the OS when the
//!   file is created and held only in this process's memory. A file left on
//!   a disk (a crash, a disk image, a snapshot of the volume) is noise
//!   without a key that never existed anywhere else;
//! * **authenticated frame by frame**: the file is a run of sealed frames of
//!   at most [`FRAME_BYTES`]; frame *i* is sealed with nonce *i*, and where
//!   each frame starts is kept in memory, not in the file. A frame modified,
//!   swapped, truncated or replayed on disk fails to open and the statement
//!   fails; DataFusion decodes spilled Arrow IPC without validating it, so
//!   this is also what keeps a tampered file from reaching that decoder;
//! * **counted against one quota** shared by every statement that spills
//!   (`[gate] max_spill_mib`): a write that would pass it fails the
//!   statement with [`QUOTA_EXCEEDED`] in its message, and a file gives its
//!   bytes back when DataFusion drops it.
//!
//! The files are read while they are written (DataFusion's repartition
//! reads a spill file as batches reach it): a reader sees the frames sealed
//! so far, which is why a writer's `flush` seals the frame it holds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::spill_file::{SpillFile, SpillWriter, TempFileFactory};
use futures::Stream;

/// Plaintext bytes sealed in one frame (the last frame of a flush may hold
/// fewer). Large enough that the 16-byte tag and the per-frame work are
/// noise, small enough that a reader holds little.
pub const FRAME_BYTES: usize = 512 * 1024;

/// Text of the error a statement fails with when spilling would pass the
/// quota (the gate recognises it).
pub const QUOTA_EXCEEDED: &str = "spill quota exceeded";

const TAG_BYTES: u64 = 16;
/// Bound to every frame, so a frame from any other AES-GCM use of the same
/// key (there is none: the key is the file's) could not be passed off.
const AAD: &[u8] = b"pds-spill-frame";

/// Bytes and files written by the spill files of one factory (and, for a
/// statement's factory, added to the shared one's as well).
#[derive(Debug, Default)]
pub struct SpillCounters {
    files: AtomicU64,
    bytes: AtomicU64,
    parent: Option<Arc<SpillCounters>>,
}

impl SpillCounters {
    fn add(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.add(files, bytes);
        }
    }

    /// Spill files created.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }
    /// Encrypted bytes written (frames and tags).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The disk space all spill files together may hold.
#[derive(Debug)]
struct Quota {
    limit: u64,
    used: AtomicU64,
}

impl Quota {
    fn charge(&self, n: u64) -> std::io::Result<()> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limit {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "{QUOTA_EXCEEDED}: spilling needs more than the {} MiB that all running statements may write to temporary files",
                self.limit >> 20
            )));
        }
        Ok(())
    }
}

/// The [`TempFileFactory`] of PDS sessions: encrypted, unnamed spill files
/// in one directory, within one quota. See the module documentation.
#[derive(Debug)]
pub struct EncryptedSpill {
    dir: PathBuf,
    quota: Arc<Quota>,
    counters: Arc<SpillCounters>,
}

impl EncryptedSpill {
    /// Spill files in `dir` (created, owner-only, if missing), at most
    /// `limit_bytes` of them at any time.
    pub fn new(dir: &Path, limit_bytes: u64) -> std::io::Result<EncryptedSpill> {
        create_private_dir(dir)?;
        Ok(EncryptedSpill {
            dir: dir.to_path_buf(),
            quota: Arc::new(Quota {
                limit: limit_bytes,
                used: AtomicU64::new(0),
            }),
            counters: Arc::new(SpillCounters::default()),
        })
    }

    /// What this factory's files have written.
    pub fn counters(&self) -> &SpillCounters {
        &self.counters
    }

    /// A factory for one statement: the same directory and quota, and its
    /// own counters, which also add to this factory's. Its counters are
    /// given to the statement's session as a config extension
    /// ([`statement_counters`]) so that the gate can record what one
    /// statement spilled.
    pub fn statement(&self) -> EncryptedSpill {
        EncryptedSpill {
            dir: self.dir.clone(),
            quota: self.quota.clone(),
            counters: Arc::new(SpillCounters {
                parent: Some(self.counters.clone()),
                ..SpillCounters::default()
            }),
        }
    }

    /// The counters of this factory, shared.
    pub fn shared_counters(&self) -> Arc<SpillCounters> {
        self.counters.clone()
    }

    /// Bytes all spill files of the quota hold now.
    pub fn used_bytes(&self) -> u64 {
        self.quota.used.load(Ordering::Relaxed)
    }

    /// The directory spill files are made in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create the spill directory {}: {e}", dir.display()),
            )
        })?;
    // An existing directory keeps its mode: make sure it is not readable by
    // others (the files are unnamed, but their count and sizes are not
    // anyone else's business either).
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot restrict the spill directory {} to its owner: {e}",
                dir.display()
            ),
        )
    })
}

fn io_err(e: std::io::Error) -> DataFusionError {
    DataFusionError::IoError(e)
}

/// The spill counters of a session's statement factory, if it has one
/// (see [`EncryptedSpill::statement`]).
pub fn statement_counters(
    config: &datafusion::prelude::SessionConfig,
) -> Option<Arc<SpillCounters>> {
    config.get_extension::<SpillCounters>()
}

impl TempFileFactory for EncryptedSpill {
    fn create_temp_file(&self, description: &str) -> Result<Arc<dyn SpillFile>> {
        Ok(Arc::new(self.new_file(description)?))
    }
}

impl EncryptedSpill {
    fn new_file(&self, description: &str) -> Result<EncryptedFile> {
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| {
            io_err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create a spill file in {} while {description}: {e}",
                    self.dir.display()
                ),
            ))
        })?;
        let key = pds_keys::SecretKey::random()
            .map_err(|e| DataFusionError::Execution(format!("spill file key: {e}")))?;
        let cipher = Aes256Gcm::new(&(*key.expose()).into());
        self.counters.add(1, 0);
        Ok(EncryptedFile {
            shared: Arc::new(Shared {
                file,
                cipher,
                frames: Mutex::new(Frames::default()),
                quota: self.quota.clone(),
                counters: self.counters.clone(),
            }),
        })
    }
}

/// Where the sealed frames of a file are; only this process knows.
#[derive(Debug, Default)]
struct Frames {
    /// Offset and length (ciphertext and tag) of each frame, in order.
    at: Vec<(u64, u64)>,
    /// End of the last frame.
    end: u64,
    /// A frame could not be sealed or written.
    failed: bool,
}

struct Shared {
    file: File,
    cipher: Aes256Gcm,
    frames: Mutex<Frames>,
    quota: Arc<Quota>,
    counters: Arc<SpillCounters>,
}

impl Shared {
    fn frame(&self, i: usize) -> Option<(u64, u64)> {
        self.frames.lock().ok().and_then(|f| f.at.get(i).copied())
    }

    fn written(&self) -> u64 {
        self.frames.lock().map(|f| f.end).unwrap_or(0)
    }

    /// Seals `buf` as the next frame and appends it. After a failure the
    /// file takes no more frames: a frame sealed but not recorded would
    /// leave its nonce to be used again.
    fn seal(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut frames = self
            .frames
            .lock()
            .map_err(|_| std::io::Error::other("spill file state poisoned"))?;
        if frames.failed {
            return Err(std::io::Error::other(
                "an earlier write to this spill file failed",
            ));
        }
        let len = buf.len() as u64 + TAG_BYTES;
        self.quota.charge(len)?;
        let index = frames.at.len() as u64;
        let sealed = self
            .cipher
            .encrypt_in_place(&nonce(index).into(), AAD, buf)
            .map_err(|_| std::io::Error::other("encrypting a spill frame failed"))
            .and_then(|()| self.file.write_all_at(buf, frames.end));
        buf.clear();
        if let Err(e) = sealed {
            frames.failed = true;
            self.quota.used.fetch_sub(len, Ordering::Relaxed);
            return Err(e);
        }
        let at = frames.end;
        frames.at.push((at, len));
        frames.end = at + len;
        self.counters.add(0, len);
        Ok(())
    }

    /// Reads and opens frame `i`.
    fn open(&self, i: usize, at: u64, len: u64) -> Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at).map_err(io_err)?;
        self.cipher
            .decrypt_in_place(&nonce(i as u64).into(), AAD, &mut buf)
            .map_err(|_| {
                DataFusionError::Execution(format!(
                    "spill file frame {i} failed authentication: the temporary file was modified on disk"
                ))
            })?;
        Ok(Bytes::from(buf))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The kernel frees the unnamed file with its last descriptor; give
        // its bytes back to the quota.
        let end = self.frames.get_mut().map(|f| f.end).unwrap_or(0);
        self.quota.used.fetch_sub(end, Ordering::Relaxed);
    }
}

/// 96-bit GCM nonce of frame `i`: unique per frame of the file, and the key
/// is the file's own, so no (key, nonce) pair is ever used twice.
fn nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

/// One spill file (see the module documentation).
struct EncryptedFile {
    shared: Arc<Shared>,
}

impl SpillFile for EncryptedFile {
    fn size(&self) -> Option<u64> {
        Some(self.shared.written())
    }

    fn read_stream(&self) -> Result<Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>> {
        let shared = self.shared.clone();
        let stream = futures::stream::try_unfold(0usize, move |i| {
            let shared = shared.clone();
            async move { next_frame(shared, i).await }
        });
        Ok(Box::pin(stream))
    }

    fn open_writer(&self) -> Result<Box<dyn SpillWriter>> {
        Ok(Box::new(EncryptedWriter {
            shared: self.shared.clone(),
            buf: Vec::with_capacity(FRAME_BYTES + TAG_BYTES as usize),
        }))
    }
}

/// Frame `i` of a file and the index of the next, or `None` past the last
/// frame sealed so far.
async fn next_frame(shared: Arc<Shared>, i: usize) -> Result<Option<(Bytes, usize)>> {
    let Some((at, len)) = shared.frame(i) else {
        return Ok(None);
    };
    // File reads and decryption block: keep them off the executor's
    // threads, as DataFusion's own spill reader does.
    let bytes = tokio::task::spawn_blocking(move || shared.open(i, at, len))
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))??;
    Ok(Some((bytes, i + 1)))
}

/// Buffers plaintext into frames; a frame is sealed when full, on `flush`
/// and on `finish`.
struct EncryptedWriter {
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

impl std::io::Write for EncryptedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(FRAME_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME_BYTES {
            self.shared.seal(&mut self.buf)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.shared.seal(&mut self.buf)
    }
}

impl SpillWriter for EncryptedWriter {
    fn finish(&mut self) -> Result<()> {
        self.shared.seal(&mut self.buf).map_err(io_err)
    }
}

impl Drop for EncryptedWriter {
    fn drop(&mut self) {
        // Plaintext waiting for its frame is wiped, not just freed.
        self.buf.iter_mut().for_each(|b| *b = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::io::Write;

    fn factory(limit: u64) -> (tempfile::TempDir, EncryptedSpill) {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = EncryptedSpill::new(&dir.path().join("spill"), limit).expect("spill dir");
        (dir, spill)
    }

    /// Data that cannot be mistaken for noise: a repeated marker.
    fn plaintext(len: usize) -> Vec<u8> {
        b"BEN_NIR_PSA=0123456789ABCDEF;"
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect()
    }

    /// A file of `spill` holding `parts`, written one after the other and
    /// finished.
    fn finished(spill: &EncryptedSpill, parts: &[&[u8]]) -> EncryptedFile {
        let f = spill.new_file("test").expect("file");
        let mut w = f.open_writer().expect("writer");
        for p in parts {
            w.write_all(p).expect("write");
        }
        w.finish().expect("finish");
        f
    }

    async fn read_all(f: &dyn SpillFile) -> Result<Vec<u8>> {
        let chunks: Vec<Bytes> = f.read_stream()?.try_collect().await?;
        Ok(chunks.concat())
    }

    fn raw(f: &EncryptedFile) -> Vec<u8> {
        let mut buf = vec![0u8; f.shared.written() as usize];
        f.shared.file.read_exact_at(&mut buf, 0).expect("raw read");
        buf
    }

    #[tokio::test]
    async fn what_is_written_reads_back_and_is_never_on_disk_in_clear() {
        let (_d, spill) = factory(1 << 30);
        let data = plaintext(3 * FRAME_BYTES + 1234);
        let f = spill.new_file("test").expect("file");
        let mut w = f.open_writer().expect("writer");
        // Odd-sized writes, as the IPC writer makes.
        for chunk in data.chunks(7777) {
            w.write_all(chunk).expect("write");
        }
        w.finish().expect("finish");
        assert_eq!(read_all(&f).await.expect("read"), data);
        // Twice: DataFusion may read a file more than once.
        assert_eq!(read_all(&f).await.expect("read again"), data);

        let frames = data.len().div_ceil(FRAME_BYTES) as u64;
        assert_eq!(f.size(), Some(data.len() as u64 + frames * TAG_BYTES));
        assert_eq!(spill.counters().files(), 1);
        assert_eq!(spill.counters().bytes(), f.size().unwrap_or(0));
        assert_eq!(spill.used_bytes(), f.size().unwrap_or(0));

        let on_disk = raw(&f);
        assert_eq!(on_disk.len() as u64, f.size().unwrap_or(0));
        let marker = b"BEN_NIR_PSA";
        assert!(
            !on_disk.windows(marker.len()).any(|w| w == marker),
            "plaintext found in the spill file"
        );
        // Nothing is visible in the directory: the file has no name.
        assert_eq!(std::fs::read_dir(spill.dir()).expect("dir").count(), 0);
        drop(w);
        drop(f);
        assert_eq!(spill.used_bytes(), 0, "a dropped file gives its bytes back");
    }

    #[tokio::test]
    async fn a_reader_sees_each_flushed_frame_while_the_file_is_written() {
        let (_d, spill) = factory(1 << 30);
        let f = spill.new_file("test").expect("file");
        let mut w = f.open_writer().expect("writer");
        w.write_all(b"first batch").expect("write");
        assert_eq!(
            read_all(&f).await.expect("read"),
            b"",
            "nothing flushed yet"
        );
        w.flush().expect("flush");
        assert_eq!(read_all(&f).await.expect("read"), b"first batch");
        w.write_all(b", second").expect("write");
        w.finish().expect("finish");
        assert_eq!(read_all(&f).await.expect("read"), b"first batch, second");
    }

    #[tokio::test]
    async fn a_frame_changed_on_disk_fails_the_read() {
        let (_d, spill) = factory(1 << 30);
        let f = finished(&spill, &[&plaintext(FRAME_BYTES + 10)]);
        let shared = &f.shared;
        // Flip one bit of the second frame.
        let (at, _) = shared.frame(1).expect("two frames");
        let mut b = [0u8; 1];
        shared.file.read_exact_at(&mut b, at + 3).expect("read");
        b[0] ^= 1;
        shared.file.write_all_at(&b, at + 3).expect("write");
        let err = read_all(&f).await.expect_err("tampered frame must fail");
        assert!(
            err.to_string().contains("frame 1 failed authentication"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn frames_swapped_on_disk_fail_the_read() {
        let (_d, spill) = factory(1 << 30);
        // Two frames of the same length.
        let frame = plaintext(FRAME_BYTES);
        let f = finished(&spill, &[&frame, &frame]);
        let shared = &f.shared;
        let (a, len) = shared.frame(0).expect("frame 0");
        let (b, _) = shared.frame(1).expect("frame 1");
        let mut fa = vec![0u8; len as usize];
        let mut fb = vec![0u8; len as usize];
        shared.file.read_exact_at(&mut fa, a).expect("read");
        shared.file.read_exact_at(&mut fb, b).expect("read");
        shared.file.write_all_at(&fb, a).expect("write");
        shared.file.write_all_at(&fa, b).expect("write");
        let err = read_all(&f).await.expect_err("swapped frames must fail");
        assert!(
            err.to_string().contains("frame 0 failed authentication"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn two_files_never_share_a_key() {
        let (_d, spill) = factory(1 << 30);
        let data = plaintext(1000);
        let disk: Vec<Vec<u8>> = (0..2).map(|_| raw(&finished(&spill, &[&data]))).collect();
        // Same plaintext, same nonce (frame 0): only different keys make
        // the ciphertexts differ.
        assert_ne!(disk[0], disk[1]);
    }

    #[tokio::test]
    async fn a_write_past_the_quota_fails_and_leaves_the_quota_as_it_was() {
        let (_d, spill) = factory(FRAME_BYTES as u64 + 100);
        let f = spill.new_file("test").expect("file");
        let mut w = f.open_writer().expect("writer");
        w.write_all(&plaintext(FRAME_BYTES))
            .expect("first frame fits");
        let used = spill.used_bytes();
        assert_eq!(used, FRAME_BYTES as u64 + TAG_BYTES);
        w.write_all(&plaintext(200)).expect("buffered");
        let err = w.finish().expect_err("second frame passes the quota");
        assert!(err.to_string().contains(QUOTA_EXCEEDED), "{err}");
        assert!(err.to_string().contains("0 MiB"), "{err}");
        assert_eq!(spill.used_bytes(), used);
        // The failed frame was not sealed: the file still reads back whole.
        assert_eq!(
            read_all(&f).await.expect("read").len(),
            FRAME_BYTES,
            "the frame that fit is intact"
        );
    }

    #[test]
    fn a_statement_counts_its_own_files_and_shares_the_quota() {
        let (_d, spill) = factory(3 * FRAME_BYTES as u64);
        let (a, b) = (spill.statement(), spill.statement());
        let fa = finished(&a, &[&plaintext(FRAME_BYTES)]);
        let fb = finished(&b, &[&plaintext(100), &plaintext(50)]);
        assert_eq!(
            (a.counters().files(), a.counters().bytes()),
            (1, FRAME_BYTES as u64 + TAG_BYTES)
        );
        assert_eq!(
            (b.counters().files(), b.counters().bytes()),
            (1, 150 + TAG_BYTES)
        );
        // The shared factory sees both; the quota is one.
        assert_eq!(spill.counters().files(), 2);
        assert_eq!(
            spill.counters().bytes(),
            FRAME_BYTES as u64 + 150 + 2 * TAG_BYTES
        );
        assert_eq!(spill.used_bytes(), spill.counters().bytes());
        let c = spill.statement();
        let err = c
            .new_file("test")
            .expect("file")
            .open_writer()
            .expect("writer")
            .write_all(&plaintext(2 * FRAME_BYTES))
            .expect_err("past the shared quota");
        assert!(err.to_string().contains(QUOTA_EXCEEDED), "{err}");
        drop((fa, fb));
        assert_eq!(spill.used_bytes(), 0);
    }

    /// Spills counted by the operators named `name` in `plan`.
    fn spills_of(name: &str, plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
        let own = if plan.name() == name {
            plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
        } else {
            0
        };
        own + plan
            .children()
            .into_iter()
            .map(|c| spills_of(name, c))
            .sum::<usize>()
    }

    /// A grouped aggregation whose repartition spills under a tight memory
    /// limit completes, with every answer right. On DataFusion 55.2's
    /// defaults this query hangs on its first attempt (checked): two input
    /// tasks spill at once, the spill pool has two open files and its
    /// reader waits on the one without the batch (apache/datafusion#24883;
    /// `context` closes a repartition's spill file after every batch).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repartition_that_spills_does_not_hang() {
        use datafusion::arrow::array::{AsArray, RecordBatch};
        use datafusion::arrow::datatypes::Int64Type;
        use datafusion::datasource::MemTable;
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use std::time::Duration;

        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let keys = crate::SnapshotKeys::default();
        let settings = [
            "SET datafusion.execution.target_partitions = 2",
            "SET datafusion.execution.batch_size = 64",
        ];
        // 13 groups, each holding all 337 trace ids (13 and 337 are coprime
        // and 40 000 rows cover 13 x 337 many times), in two partitions.
        let free = crate::context(store.clone(), keys.clone(), None, None).expect("context");
        for s in settings {
            free.sql(s).await.expect("set");
        }
        let data = free
            .sql(
                "SELECT v % 13 AS g, repeat('0123456789abcdef', 2) || CAST(v % 337 AS VARCHAR) AS trace_id \
                 FROM generate_series(1, 40000) AS s(v)",
            )
            .await
            .expect("plan")
            .collect_partitioned()
            .await
            .expect("data");
        let schema = data[0][0].schema();
        let (_d, spill) = factory(1 << 30);
        let mut repartition_spills = 0;
        for attempt in 0..12 {
            let pool = Arc::new(GreedyMemoryPool::new(2 << 20));
            let ctx = crate::context(
                store.clone(),
                keys.clone(),
                Some(pool),
                Some(Arc::new(spill.statement())),
            )
            .expect("context");
            for s in settings {
                ctx.sql(s).await.expect("set");
            }
            let t = MemTable::try_new(schema.clone(), data.clone()).expect("table");
            ctx.register_table("t", Arc::new(t)).expect("register");
            let plan = ctx
                .sql("SELECT g, COUNT(DISTINCT trace_id) AS n FROM t GROUP BY g")
                .await
                .expect("plan")
                .create_physical_plan()
                .await
                .expect("physical plan");
            let run = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx());
            let batches: Vec<RecordBatch> = tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .unwrap_or_else(|_| panic!("attempt {attempt} hung for 60 s"))
                .unwrap_or_else(|e| panic!("attempt {attempt} failed: {e}"));
            let mut got = Vec::new();
            for b in &batches {
                let (g, n) = (
                    b.column(0).as_primitive::<Int64Type>(),
                    b.column(1).as_primitive::<Int64Type>(),
                );
                got.extend((0..b.num_rows()).map(|r| (g.value(r), n.value(r))));
            }
            got.sort_unstable();
            assert_eq!(got, (0..13).map(|g| (g, 337)).collect::<Vec<_>>());
            repartition_spills += spills_of("RepartitionExec", &plan);
        }
        // The limit did push the repartitions to disk, so the path that hung
        // was taken.
        assert!(repartition_spills > 0, "no repartition spilled");
        assert!(spill.counters().files() > 0, "nothing spilled");
        assert_eq!(spill.used_bytes(), 0);
    }

    #[test]
    fn the_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("spill");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        EncryptedSpill::new(&dir, 1).expect("spill");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A path that cannot be a directory gives an error naming it.
        let file = d.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let err = EncryptedSpill::new(&file.join("spill"), 1).expect_err("not a dir");
        assert!(err.to_string().contains("a-file/spill"), "{err}");
    }
}
