//! `pds keys rotate`: replace the master key without rewriting any data.
//!
//! Envelope encryption makes this cheap: the master key only wraps the
//! platform key (in the key store) and one data key per snapshot (in the
//! catalogue). Rotation re-wraps those, in this order, so that a crash at
//! any point loses nothing and running the same command again finishes it:
//!
//! 1. derive the new master key, save the store it will use beside the
//!    current one (`keystore.rotation.json`: a passphrase's salt must
//!    survive a crash) and re-wrap every key in memory;
//! 2. save the re-wrapped snapshot keys in one catalogue transaction;
//! 3. replace the key store file (atomic rename);
//! 4. point `config.toml` at the new key file or passphrase.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pds_home::InitMaster;
use pds_keys::{KeyError, KeyStore, MasterSource, WrappedKey};

/// Key management commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Replace the master key: re-wrap the platform key and every snapshot key.
    /// The new key comes from --new-master-key-file (created, mode 0600, if
    /// missing) or from PDS_NEW_MASTER_PASSPHRASE. No data file is rewritten.
    Rotate {
        /// The new master key file (64 hex characters; created if missing).
        #[arg(long)]
        new_master_key_file: Option<PathBuf>,
    },
}

/// Runs a keys command.
pub(crate) async fn run(home: &Path, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Rotate {
            new_master_key_file,
        } => rotate(home, new_master_key_file).await,
    }
}

async fn rotate(home: &Path, new_file: Option<PathBuf>) -> Result<()> {
    let mut h = pds_home::Home::open(home)?;
    let (new_source, new_master) = match (new_file, std::env::var("PDS_NEW_MASTER_PASSPHRASE")) {
        (Some(f), _) => {
            if !f.exists() {
                MasterSource::create_key_file(&f)
                    .with_context(|| format!("creating {}", f.display()))?;
                println!("Created the new master key file {}", f.display());
            }
            (MasterSource::KeyFile(f.clone()), InitMaster::KeyFile(f))
        }
        (None, Ok(p)) => (
            MasterSource::Passphrase(p.clone()),
            InitMaster::Passphrase(p),
        ),
        (None, Err(_)) => bail!(
            "pds keys rotate needs the new master key: --new-master-key-file PATH or PDS_NEW_MASTER_PASSPHRASE"
        ),
    };
    let _lock = h.lock_for_writing("pds keys rotate")?;
    let old_source = h.master_source()?;
    let old = match KeyStore::open(&h.keys_dir(), &old_source) {
        Ok(k) => k,
        Err(open_error) => {
            // Interrupted after step 3: the store already uses the new key
            // (possibly of another kind: key file <-> passphrase).
            if KeyStore::open(&h.keys_dir(), &new_source).is_ok() {
                let _ = std::fs::remove_file(h.keys_dir().join(pds_keys::PENDING_FILE));
                h.set_master(&new_master)?;
                println!(
                    "The key store already uses the new master key (an earlier rotation was interrupted); config.toml now points to it."
                );
                return Ok(());
            }
            if matches!(open_error, KeyError::WrongMasterKey(_)) {
                bail!(
                    "neither the configured master key nor the new one opens the key store in {}",
                    h.keys_dir().display()
                );
            }
            return Err(open_error.into());
        }
    };
    let new = old.prepare_rotation(&new_source)?;
    let cat = h.catalog().await?;
    let mut rewrapped = Vec::new();
    for (which, wrapped) in cat.wrapped_keys().await? {
        let w: WrappedKey =
            serde_json::from_str(&wrapped).with_context(|| format!("{which:?}: bad key record"))?;
        let w2 = old
            .rewrap(&new, &w)
            .with_context(|| format!("re-wrapping the key of {which:?}"))?;
        rewrapped.push((which, serde_json::to_string(&w2)?));
    }
    cat.set_wrapped_keys(&rewrapped).await?;
    cat.close().await;
    new.commit_rotation()?;
    h.set_master(&new_master)?;
    println!(
        "Master key rotated: platform key and {} stored key(s) (snapshots, projects, audit log, TOTP seeds, exports) re-wrapped; no data file rewritten.",
        rewrapped.len()
    );
    if let InitMaster::KeyFile(f) = &new_master {
        println!(
            "The new master key is {}: back it up. The old key no longer opens this home.",
            f.display()
        );
    } else {
        println!("Start PDS with the new PDS_MASTER_PASSPHRASE from now on.");
    }
    Ok(())
}
