//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, as PostgreSQL speaks it.
//!
//! The server keeps PostgreSQL's verifier (salt, iteration count, StoredKey,
//! ServerKey). Neither lets anyone sign in: StoredKey is a hash of the
//! client key, and the proof the client sends is checked against it. The
//! password itself never crosses the network.
//!
//! No channel binding (`SCRAM-SHA-256-PLUS`) is offered: TLS is terminated by
//! PDS and clients fall back to plain SCRAM-SHA-256, as with PostgreSQL
//! configured without it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Iterations for new verifiers: PostgreSQL's default.
pub const ITERATIONS: u32 = 4096;

/// Errors of a SCRAM exchange. The messages go to the client, so they never
/// say whether the account exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// A message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which PDS does not offer.
    #[error(
        "SCRAM channel binding is not supported; connect with channel_binding=disable or prefer"
    )]
    ChannelBinding,
    /// Wrong password (or no such account).
    #[error("password authentication failed")]
    Failed,
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block (`Hi` of RFC 5802).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

impl Verifier {
    /// Computes the verifier of a password.
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// PostgreSQL's text form: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses [`Verifier::encode`]'s form.
    pub fn decode(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iter.parse().ok().filter(|i| *i >= 4096)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// The server's state between its first message and the client's final one.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    /// Whether the verifier is a decoy for an unknown or disabled account:
    /// the exchange then fails at the proof, like a wrong password.
    decoy: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

/// Handles the client-first message (`n,,n=user,r=nonce`) and returns the
/// server-first message. With `verifier = None` (unknown or disabled
/// account), a decoy verifier derived from `decoy_secret` and the user name
/// makes the exchange look the same, then fail.
pub fn server_first(
    client_first: &str,
    verifier: Option<Verifier>,
    user: &str,
    decoy_secret: &[u8],
    server_nonce: &str,
) -> Result<(Exchange, String), ScramError> {
    let mut parts = client_first.splitn(3, ',');
    let cb = parts.next().ok_or(ScramError::Malformed("empty message"))?;
    let authzid = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
    let bare = parts
        .next()
        .ok_or(ScramError::Malformed("no client-first-message-bare"))?;
    match cb {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel binding flag")),
    }
    if !authzid.is_empty() {
        return Err(ScramError::Malformed(
            "authorisation identities are not supported",
        ));
    }
    let nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != ','))
        .ok_or(ScramError::Malformed("no client nonce"))?;
    let (verifier, decoy) = match verifier {
        Some(v) => (v, false),
        None => {
            let salt = hmac(decoy_secret, user.as_bytes())[..16].to_vec();
            (
                Verifier {
                    iterations: ITERATIONS,
                    salt,
                    stored_key: hmac(decoy_secret, b"stored"),
                    server_key: hmac(decoy_secret, b"server"),
                },
                true,
            )
        }
    };
    let nonce = format!("{nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        Exchange {
            verifier,
            decoy,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: format!("{cb},{authzid},"),
        },
        server_first,
    ))
}

impl Exchange {
    /// Checks the client-final message (`c=...,r=...,p=proof`) and returns
    /// the server-final message (`v=signature`).
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut cb = None;
        let mut nonce = None;
        for a in without_proof.split(',') {
            if let Some(v) = a.strip_prefix("c=") {
                cb = Some(v);
            } else if let Some(v) = a.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cb = cb.ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if B64.decode(cb).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "channel binding does not match the GS2 header",
            ));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature.iter()) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let matches: bool = computed.ct_eq(&self.verifier.stored_key).into();
        if !matches || self.decoy {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::new("pencil", &salt, 4096);
        let (ex, first) = server_first(
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            Some(v.clone()),
            "user",
            b"k",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = ex
            .finish("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(fin, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert_eq!(Verifier::decode(&v.encode()), Some(v));
    }

    #[test]
    fn wrong_proof_and_decoy_fail_alike() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::new("not pencil", &salt, 4096);
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let go = |v: Option<Verifier>| {
            let (ex, _) = server_first(
                "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                v,
                "user",
                b"k",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
            ex.finish(client_final)
        };
        assert_eq!(go(Some(v)), Err(ScramError::Failed));
        assert_eq!(go(None), Err(ScramError::Failed));
        // The decoy salt is stable per user, so probing twice reveals nothing.
        let a = server_first("n,,n=,r=abc", None, "ghost", b"k", "x")
            .unwrap()
            .1;
        let b = server_first("n,,n=,r=abc", None, "ghost", b"k", "x")
            .unwrap()
            .1;
        assert_eq!(a, b);
    }

    #[test]
    fn channel_binding_and_garbage_are_refused() {
        assert_eq!(
            server_first("p=tls-server-end-point,,n=,r=abc", None, "u", b"k", "x").unwrap_err(),
            ScramError::ChannelBinding
        );
        assert!(matches!(
            server_first("n,,n=", None, "u", b"k", "x").unwrap_err(),
            ScramError::Malformed(_)
        ));
        assert_eq!(Verifier::decode("SCRAM-SHA-256$10:AA==$AA==:AA=="), None);
    }
}
