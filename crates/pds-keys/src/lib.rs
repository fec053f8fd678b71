//! The PDS key store: one master key protects every other key.
//!
//! * The **master key** (256 bits) is never stored. It comes from a passphrase
//!   (Argon2id, parameters and salt kept in the key store) or from a key file
//!   given at start. A wrong master key is detected by AES-GCM tag
//!   verification of a check value, which is constant-time.
//! * The **platform pseudonymisation key** (random 256 bits) is stored wrapped
//!   (AES-256-GCM) by the master key. The loader keys HMAC-SHA256 with it.
//! * **Data keys** (one per snapshot, for Parquet modular encryption) are
//!   generated here and handed back wrapped; the catalogue stores the wrapped
//!   form. Rotating the master key re-wraps keys, it never rewrites data.
//!
//! Every wrapped key is bound to its purpose through AES-GCM associated data,
//! so a wrapped data key cannot be passed off as the platform key.
//! Secrets are zeroed on drop and never printed (`Debug` is redacted).
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// File name of the key store inside its directory.
pub const KEYSTORE_FILE: &str = "keystore.json";
const CHECK_PURPOSE: &str = "pds/keystore-check";
const CHECK_VALUE: &[u8] = b"PDS key store check v1";
const PLATFORM_PURPOSE: &str = "pds/platform-pseudonymisation-key";

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The master key does not open this key store.
    #[error("the master key does not open the key store in {0}: wrong passphrase or key file")]
    WrongMasterKey(PathBuf),
    /// A key store already exists where one is being created.
    #[error("a key store already exists in {0}; refusing to overwrite it")]
    Exists(PathBuf),
    /// No key store where one is being opened.
    #[error("no key store in {0}: run `pds init` first")]
    Missing(PathBuf),
    /// The master key source is unusable.
    #[error("master key: {0}")]
    Master(String),
    /// The key store file is damaged.
    #[error("key store {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A wrapped key does not decrypt for the given purpose.
    #[error(
        "wrapped key for `{0}` does not decrypt with this master key (wrong key, wrong purpose or tampered)"
    )]
    Unwrap(String),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A rotation to the master key already in use.
    #[error("the new master key is the current one; give a different key file or passphrase")]
    SameMasterKey,
}

/// A 256-bit secret, zeroed on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

/// Constant-time comparison: equality of secrets must not leak timing.
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(k))
    }

    /// The key bytes, for the cryptographic code that needs them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key from bytes (e.g. a key file).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        SecretKey(b)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterSource {
    /// A passphrase, stretched with Argon2id.
    Passphrase(String),
    /// A file holding 64 hexadecimal characters (32 bytes).
    KeyFile(PathBuf),
}

impl fmt::Debug for MasterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterSource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            MasterSource::KeyFile(p) => write!(f, "KeyFile({})", p.display()),
        }
    }
}

impl MasterSource {
    /// Writes a new random key file (mode 0600), refusing to overwrite one.
    pub fn create_key_file(path: &Path) -> Result<(), KeyError> {
        let key = SecretKey::random()?;
        let mut f = create_private(path)?;
        let mut text = hex::encode(key.expose());
        text.push('\n');
        let res = f.write_all(text.as_bytes());
        text.zeroize();
        res.map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A key wrapped (encrypted) by the master key, bound to a purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// What the key is for; authenticated as associated data.
    pub purpose: String,
    /// 96-bit nonce, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub ciphertext: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum MasterSpec {
    Passphrase {
        kdf: String,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
    },
    KeyFile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    master: MasterSpec,
    check: WrappedKey,
    platform_key: WrappedKey,
}

/// An opened key store.
pub struct KeyStore {
    dir: PathBuf,
    master: SecretKey,
    platform: SecretKey,
    file: StoreFile,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private(path: &Path) -> Result<fs::File, KeyError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io(path))
}

/// Writes `bytes` to `path` as a file readable by its owner only (0600 on
/// Unix), replacing a file already there (removed first, so an older,
/// looser mode does not survive).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let mut f = create_private(path)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io(path))
}

/// Argon2id cost used for new passphrase key stores (OWASP 2023 baseline is
/// 19 MiB, t=2; PDS uses more memory because it derives rarely).
const M_COST_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

fn derive(source: &MasterSource, spec: &MasterSpec) -> Result<SecretKey, KeyError> {
    match (source, spec) {
        (
            MasterSource::Passphrase(p),
            MasterSpec::Passphrase {
                m_cost_kib,
                t_cost,
                p_cost,
                salt,
                ..
            },
        ) => {
            if p.chars().count() < 12 {
                return Err(KeyError::Master(
                    "the passphrase must have at least 12 characters".into(),
                ));
            }
            let salt = hex::decode(salt).map_err(|e| KeyError::Master(format!("bad salt: {e}")))?;
            let params = argon2::Params::new(*m_cost_kib, *t_cost, *p_cost, Some(32))
                .map_err(|e| KeyError::Master(format!("bad Argon2 parameters: {e}")))?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            a.hash_password_into(p.as_bytes(), &salt, &mut out)
                .map_err(|e| KeyError::Master(format!("Argon2id failed: {e}")))?;
            Ok(SecretKey(out))
        }
        (MasterSource::KeyFile(path), MasterSpec::KeyFile) => {
            let mut text = fs::read_to_string(path).map_err(io(path))?;
            let decoded = hex::decode(text.trim());
            text.zeroize();
            let mut bytes = decoded.map_err(|_| {
                KeyError::Master(format!(
                    "{} must hold 64 hexadecimal characters",
                    path.display()
                ))
            })?;
            if bytes.len() != 32 {
                bytes.zeroize();
                return Err(KeyError::Master(format!(
                    "{} must hold 32 bytes (64 hex characters)",
                    path.display()
                )));
            }
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes);
            bytes.zeroize();
            Ok(SecretKey(k))
        }
        (MasterSource::Passphrase(_), MasterSpec::KeyFile) => Err(KeyError::Master(
            "this key store is protected by a key file, not a passphrase".into(),
        )),
        (MasterSource::KeyFile(_), MasterSpec::Passphrase { .. }) => Err(KeyError::Master(
            "this key store is protected by a passphrase, not a key file".into(),
        )),
    }
}

fn wrap(master: &SecretKey, purpose: &str, secret: &[u8]) -> Result<WrappedKey, KeyError> {
    let cipher = Aes256Gcm::new(&(*master.expose()).into());
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    let ct = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: secret,
                aad: purpose.as_bytes(),
            },
        )
        .map_err(|_| KeyError::Unwrap(purpose.to_string()))?;
    Ok(WrappedKey {
        purpose: purpose.to_string(),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    })
}

fn unwrap_bytes(master: &SecretKey, w: &WrappedKey, purpose: &str) -> Result<Vec<u8>, KeyError> {
    if w.purpose != purpose {
        return Err(KeyError::Unwrap(purpose.to_string()));
    }
    let nonce: [u8; 12] = hex::decode(&w.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| KeyError::Unwrap(purpose.to_string()))?;
    let ct = hex::decode(&w.ciphertext).map_err(|_| KeyError::Unwrap(purpose.to_string()))?;
    let cipher = Aes256Gcm::new(&(*master.expose()).into());
    cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &ct,
                aad: purpose.as_bytes(),
            },
        )
        .map_err(|_| KeyError::Unwrap(purpose.to_string()))
}

fn unwrap_key(master: &SecretKey, w: &WrappedKey, purpose: &str) -> Result<SecretKey, KeyError> {
    let mut v = unwrap_bytes(master, w, purpose)?;
    let res = <[u8; 32]>::try_from(v.as_slice())
        .map(SecretKey)
        .map_err(|_| KeyError::Unwrap(purpose.to_string()));
    v.zeroize();
    res
}

fn new_spec(source: &MasterSource) -> Result<MasterSpec, KeyError> {
    Ok(match source {
        MasterSource::Passphrase(_) => {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| KeyError::Random(e.to_string()))?;
            MasterSpec::Passphrase {
                kdf: "argon2id-v19".into(),
                m_cost_kib: M_COST_KIB,
                t_cost: T_COST,
                p_cost: P_COST,
                salt: hex::encode(salt),
            }
        }
        MasterSource::KeyFile(_) => MasterSpec::KeyFile,
    })
}

fn write_store(dir: &Path, file: &StoreFile, replace: bool) -> Result<(), KeyError> {
    write_store_as(dir, KEYSTORE_FILE, file, replace)
}

/// The key store a rotation will install, saved before any data key is
/// re-wrapped for it (its passphrase salt must survive a crash).
pub const PENDING_FILE: &str = "keystore.rotation.json";

fn write_store_as(dir: &Path, name: &str, file: &StoreFile, replace: bool) -> Result<(), KeyError> {
    let path = dir.join(name);
    let json = serde_json::to_vec_pretty(file).map_err(|e| KeyError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if replace {
        // Write beside, then rename: a crash leaves the old or the new store, never half of one.
        let tmp = dir.join(format!("{name}.new"));
        let _ = fs::remove_file(&tmp);
        let mut f = create_private(&tmp)?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        // Make the rename itself durable.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    } else {
        let mut f = create_private(&path).map_err(|e| match e {
            KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                KeyError::Exists(dir.to_path_buf())
            }
            e => e,
        })?;
        f.write_all(&json).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }
}

impl KeyStore {
    /// Creates a key store in `dir` (created if missing) with a fresh
    /// platform key. Refuses to overwrite an existing store.
    pub fn create(dir: &Path, source: &MasterSource) -> Result<KeyStore, KeyError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join(KEYSTORE_FILE).exists() {
            return Err(KeyError::Exists(dir.to_path_buf()));
        }
        let spec = new_spec(source)?;
        let master = derive(source, &spec)?;
        let platform = SecretKey::random()?;
        let file = StoreFile {
            version: 1,
            master: spec,
            check: wrap(&master, CHECK_PURPOSE, CHECK_VALUE)?,
            platform_key: wrap(&master, PLATFORM_PURPOSE, platform.expose())?,
        };
        write_store(dir, &file, false)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            master,
            platform,
            file,
        })
    }

    /// Opens the key store in `dir` with the master key from `source`.
    pub fn open(dir: &Path, source: &MasterSource) -> Result<KeyStore, KeyError> {
        Self::open_as(dir, KEYSTORE_FILE, source)
    }

    fn open_as(dir: &Path, name: &str, source: &MasterSource) -> Result<KeyStore, KeyError> {
        let path = dir.join(name);
        if !path.exists() {
            return Err(KeyError::Missing(dir.to_path_buf()));
        }
        let bytes = fs::read(&path).map_err(io(&path))?;
        let file: StoreFile = serde_json::from_slice(&bytes).map_err(|e| KeyError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(KeyError::Corrupt {
                path,
                reason: format!("unsupported version {}", file.version),
            });
        }
        let master = derive(source, &file.master)?;
        let check = unwrap_bytes(&master, &file.check, CHECK_PURPOSE)
            .map_err(|_| KeyError::WrongMasterKey(dir.to_path_buf()))?;
        if check != CHECK_VALUE {
            return Err(KeyError::WrongMasterKey(dir.to_path_buf()));
        }
        let platform = unwrap_key(&master, &file.platform_key, PLATFORM_PURPOSE)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            master,
            platform,
            file,
        })
    }

    /// The platform pseudonymisation key (HMAC-SHA256 key of the loader).
    pub fn platform_key(&self) -> &SecretKey {
        &self.platform
    }

    /// A fresh data key and its wrapped form, bound to `purpose`
    /// (e.g. `pds/snapshot/<id>`).
    pub fn new_data_key(&self, purpose: &str) -> Result<(SecretKey, WrappedKey), KeyError> {
        let k = SecretKey::random()?;
        let w = wrap(&self.master, purpose, k.expose())?;
        Ok((k, w))
    }

    /// Wraps an existing 256-bit secret (a TOTP seed, say) under the master
    /// key, bound to `purpose`; [`KeyStore::unwrap_data_key`] opens it and
    /// master-key rotation re-wraps it like any data key.
    pub fn wrap_key(&self, key: &SecretKey, purpose: &str) -> Result<WrappedKey, KeyError> {
        wrap(&self.master, purpose, key.expose())
    }

    /// Unwraps a data key, checking it was wrapped for `purpose`.
    pub fn unwrap_data_key(&self, w: &WrappedKey, purpose: &str) -> Result<SecretKey, KeyError> {
        unwrap_key(&self.master, w, purpose)
    }

    /// Replaces the master key: re-wraps the platform key under the new one
    /// and atomically rewrites the key store. Returns the store opened with
    /// the new master key. Prefer [`KeyStore::prepare_rotation`] when data
    /// keys are stored elsewhere (the catalogue), to re-wrap them first.
    pub fn rotate_master(&self, new_source: &MasterSource) -> Result<KeyStore, KeyError> {
        let new = self.prepare_rotation(new_source)?;
        new.commit_rotation()?;
        Ok(new)
    }

    /// First half of a rotation: the store under a new master key, in
    /// memory only. Re-wrap the stored data keys with [`KeyStore::rewrap`],
    /// save them, then call [`KeyStore::commit_rotation`] on the result. A
    /// crash in between leaves the old store in place; running the rotation
    /// again with the same two keys completes it (see `rewrap`).
    pub fn prepare_rotation(&self, new_source: &MasterSource) -> Result<KeyStore, KeyError> {
        // A rotation interrupted earlier left its store: reuse it, so data
        // keys already re-wrapped for it stay readable (a passphrase's salt
        // is random and lives only in that file).
        if let Ok(pending) = Self::open_as(&self.dir, PENDING_FILE, new_source)
            && pending.platform == self.platform
        {
            return Ok(pending);
        }
        let spec = new_spec(new_source)?;
        let master = derive(new_source, &spec)?;
        if master == self.master {
            return Err(KeyError::SameMasterKey);
        }
        let file = StoreFile {
            version: 1,
            master: spec,
            check: wrap(&master, CHECK_PURPOSE, CHECK_VALUE)?,
            platform_key: wrap(&master, PLATFORM_PURPOSE, self.platform.expose())?,
        };
        write_store_as(&self.dir, PENDING_FILE, &file, true)?;
        Ok(KeyStore {
            dir: self.dir.clone(),
            master,
            platform: self.platform.clone(),
            file,
        })
    }

    /// Second half of a rotation: atomically replaces the key store file
    /// and removes the pending one.
    pub fn commit_rotation(&self) -> Result<(), KeyError> {
        write_store(&self.dir, &self.file, true)?;
        let _ = fs::remove_file(self.dir.join(PENDING_FILE));
        Ok(())
    }

    /// Re-wraps a key wrapped by this store's master key under `new`'s. A key
    /// that `new` already unwraps (a rotation interrupted after the data keys
    /// were saved) is returned as it is, so a rotation can be run again.
    pub fn rewrap(&self, new: &KeyStore, w: &WrappedKey) -> Result<WrappedKey, KeyError> {
        match unwrap_key(&self.master, w, &w.purpose) {
            Ok(k) => wrap(&new.master, &w.purpose, k.expose()),
            Err(e) => match unwrap_key(&new.master, w, &w.purpose) {
                Ok(_) => Ok(w.clone()),
                Err(_) => Err(e),
            },
        }
    }

    /// Whether the store is protected by a passphrase (else a key file).
    pub fn uses_passphrase(&self) -> bool {
        matches!(self.file.master, MasterSpec::Passphrase { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery staple";

    #[test]
    fn create_open_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::create(dir.path(), &MasterSource::Passphrase(PASS.into())).unwrap();
        let platform = s.platform_key().clone();
        let o = KeyStore::open(dir.path(), &MasterSource::Passphrase(PASS.into())).unwrap();
        assert_eq!(o.platform_key(), &platform);
        let e = KeyStore::open(
            dir.path(),
            &MasterSource::Passphrase("another long passphrase".into()),
        )
        .unwrap_err();
        assert!(matches!(e, KeyError::WrongMasterKey(_)), "{e}");
        let e = KeyStore::create(dir.path(), &MasterSource::Passphrase(PASS.into())).unwrap_err();
        assert!(matches!(e, KeyError::Exists(_)));
        // The store holds no clear key material.
        let text = fs::read_to_string(dir.path().join(KEYSTORE_FILE)).unwrap();
        assert!(!text.contains(&hex::encode(platform.expose())));
        assert!(!text.contains(PASS));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEYSTORE_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key store readable by others: {mode:o}");
        }
    }

    #[test]
    fn short_passphrase_and_bad_key_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e =
            KeyStore::create(dir.path(), &MasterSource::Passphrase("short".into())).unwrap_err();
        assert!(e.to_string().contains("12 characters"));
        let kf = dir.path().join("master.key");
        fs::write(&kf, "not hex").unwrap();
        let e = KeyStore::create(&dir.path().join("ks"), &MasterSource::KeyFile(kf)).unwrap_err();
        assert!(e.to_string().contains("64 hex"), "{e}");
    }

    #[test]
    fn data_keys_are_bound_to_their_purpose_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("master.key");
        MasterSource::create_key_file(&kf).unwrap();
        assert!(
            MasterSource::create_key_file(&kf).is_err(),
            "never overwrite a key file"
        );
        let ks = dir.path().join("keys");
        let s = KeyStore::create(&ks, &MasterSource::KeyFile(kf.clone())).unwrap();
        let (k, w) = s.new_data_key("pds/snapshot/1").unwrap();
        assert_eq!(s.unwrap_data_key(&w, "pds/snapshot/1").unwrap(), k);
        assert!(
            s.unwrap_data_key(&w, "pds/snapshot/2").is_err(),
            "purpose is authenticated"
        );
        let mut forged = w.clone();
        forged.purpose = "pds/snapshot/2".into();
        assert!(
            s.unwrap_data_key(&forged, "pds/snapshot/2").is_err(),
            "relabelled key refused"
        );
        let mut tampered = w.clone();
        let mut ct = hex::decode(&tampered.ciphertext).unwrap();
        ct[0] ^= 1;
        tampered.ciphertext = hex::encode(ct);
        assert!(s.unwrap_data_key(&tampered, "pds/snapshot/1").is_err());

        let n = s
            .rotate_master(&MasterSource::Passphrase(PASS.into()))
            .unwrap();
        let w2 = s.rewrap(&n, &w).unwrap();
        assert_eq!(n.unwrap_data_key(&w2, "pds/snapshot/1").unwrap(), k);
        assert!(
            n.unwrap_data_key(&w, "pds/snapshot/1").is_err(),
            "old wrapping no longer opens"
        );
        assert!(
            KeyStore::open(&ks, &MasterSource::KeyFile(kf)).is_err(),
            "old master retired"
        );
        let reopened = KeyStore::open(&ks, &MasterSource::Passphrase(PASS.into())).unwrap();
        assert_eq!(
            reopened.platform_key(),
            s.platform_key(),
            "pseudonyms survive rotation"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let k = SecretKey::random().unwrap();
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        assert!(!format!("{:?}", MasterSource::Passphrase(PASS.into())).contains("horse"));
    }
}
