//! Signed checkpoints in the C2SP `tlog-checkpoint` signed-note format:
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 tree head>
//!
//! — <key name> <base64(key hash (4 bytes) || Ed25519 signature)>
//! ```
//!
//! The signature covers the three body lines with their newlines; the key
//! hash is the first 4 bytes of `SHA-256(key name || "\n" || 0x01 ||
//! public key)` (0x01 = Ed25519), as in the signed-note specification, so
//! standard transparency-log tools can check PDS checkpoints.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::AuditError;
use crate::merkle::Hash;

/// A parsed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log origin line.
    pub origin: String,
    /// Entries covered.
    pub size: u64,
    /// Tree head.
    pub root: Hash,
}

/// The 4-byte key hash of the signed-note format.
pub fn key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([1u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl Checkpoint {
    /// The signed body.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The whole signed note.
    pub fn sign(&self, name: &str, key: &SigningKey) -> String {
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        let mut blob = key_hash(name, &key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {name} {}\n", B64.encode(blob))
    }

    /// Parses a note and checks its signature by `name`/`key`.
    pub fn open(note: &str, name: &str, key: &VerifyingKey) -> Result<Checkpoint, AuditError> {
        let bad = |why: &str| AuditError::Checkpoint(format!("{why}: {note:?}"));
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line between body and signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines.next().ok_or_else(|| bad("no origin"))?.to_string();
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("bad tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|s| B64.decode(s).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("bad tree head"))?;
        let want = key_hash(name, key);
        let prefix = format!("\u{2014} {name} ");
        for line in sigs.lines() {
            let Some(b64) = line.strip_prefix(&prefix) else {
                continue;
            };
            let blob = B64
                .decode(b64)
                .map_err(|_| bad("signature is not base64"))?;
            if blob.len() != 68 || blob[..4] != want {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..]).map_err(|_| bad("malformed signature"))?;
            key.verify(body.as_bytes(), &sig).map_err(|_| {
                AuditError::Checkpoint(format!(
                    "signature does not verify on checkpoint of size {size}"
                ))
            })?;
            return Ok(Checkpoint { origin, size, root });
        }
        Err(AuditError::Checkpoint(format!(
            "checkpoint of size {size} carries no signature by `{name}` with this key"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let c = Checkpoint {
            origin: "pds.example/audit".into(),
            size: 42,
            root: [9u8; 32],
        };
        let note = c.sign("pds-audit", &key);
        assert!(note.starts_with("pds.example/audit\n42\n"));
        assert!(note.contains("\n\n\u{2014} pds-audit "));
        let back = Checkpoint::open(&note, "pds-audit", &key.verifying_key()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.sign("pds-audit", &key), note, "byte-exact round trip");
        let forged = note.replace("\n42\n", "\n41\n");
        assert!(Checkpoint::open(&forged, "pds-audit", &key.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(Checkpoint::open(&note, "pds-audit", &other.verifying_key()).is_err());
    }
}
