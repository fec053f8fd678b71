//! The second factor: TOTP (RFC 6238) and recovery codes.
//!
//! Seeds are 256 random bits, used with HMAC-SHA-256 by default (the
//! platform's crypto policy bans SHA-1; RFC 6238 allows SHA-256 and current
//! authenticator apps read `algorithm=SHA256` from the enrolment QR code).
//! A code is accepted in the current 30-second step or one step either
//! side, and each step only once (the catalogue keeps the last one spent).
//! Recovery codes carry 80 random bits each, so an unsalted SHA-256 is
//! enough to store them.

use base64::Engine;
use totp_rs::{Algorithm, Builder, Totp};

use crate::AccountError;

/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Steps accepted either side of the current one (clock drift, typing).
pub const SKEW: u16 = 1;
/// Recovery codes handed out at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// The TOTP hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotpAlgorithm {
    /// HMAC-SHA-256 (default; approved).
    #[default]
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl TotpAlgorithm {
    /// Parses `SHA256` or `SHA512`.
    pub fn parse(s: &str) -> Result<TotpAlgorithm, AccountError> {
        match s.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA256" => Ok(TotpAlgorithm::Sha256),
            "SHA512" => Ok(TotpAlgorithm::Sha512),
            "SHA1" => Err(AccountError::Invalid(
                "TOTP with SHA-1 is not allowed (the crypto policy bans SHA-1); use SHA256".into(),
            )),
            other => Err(AccountError::Invalid(format!(
                "unknown TOTP algorithm {other:?}: use SHA256 or SHA512"
            ))),
        }
    }

    fn totp(self) -> Algorithm {
        match self {
            TotpAlgorithm::Sha256 => Algorithm::SHA256,
            TotpAlgorithm::Sha512 => Algorithm::SHA512,
        }
    }
}

/// Builds the generator for a seed.
pub fn generator(
    seed: &[u8],
    algorithm: TotpAlgorithm,
    issuer: &str,
    account: &str,
) -> Result<Totp, AccountError> {
    Builder::new()
        .with_algorithm(algorithm.totp())
        .with_digits(DIGITS)
        .with_skew(SKEW)
        .with_step_duration(STEP_SECS)
        .with_secret(seed.to_vec())
        .with_issuer(Some(issuer.replace(':', " ")))
        .with_account_name(account.replace(':', " "))
        .build()
        .map_err(|e| AccountError::Internal(format!("TOTP: {e}")))
}

/// The step a code matches at `unix_time`, if any. Input other than
/// `DIGITS` digits (spaces allowed) never matches.
pub fn matching_step(totp: &Totp, code: &str, unix_time: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS as usize || !code.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    totp.check(&code, unix_time)
}

/// The code an authenticator holding `otpauth_uri` shows at `unix_time`
/// (what a phone does; for the demo and tests).
pub fn code_at(otpauth_uri: &str, unix_time: u64) -> Result<String, AccountError> {
    let t = Totp::from_url(otpauth_uri)
        .map_err(|e| AccountError::Invalid(format!("not a usable otpauth URI: {e}")))?;
    Ok(t.generate(unix_time).to_string())
}

/// What a person needs to add the account to an authenticator app.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The seed in base32 (to type in by hand).
    pub secret_base32: String,
    /// `otpauth://totp/...` URI (what the QR code holds).
    pub otpauth_uri: String,
    /// The QR code as an SVG document.
    pub qr_svg: String,
    /// The QR code drawn with Unicode half blocks, for a terminal.
    pub qr_text: String,
}

/// Renders the enrolment of a generator.
pub fn enrolment(totp: &Totp) -> Result<Enrolment, AccountError> {
    let uri = totp
        .to_url()
        .map_err(|e| AccountError::Internal(format!("TOTP URI: {e}")))?;
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| AccountError::Internal(format!("QR code: {e}")))?;
    let qr_svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    let qr_text = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build();
    Ok(Enrolment {
        secret_base32: totp.secret().to_base32(),
        otpauth_uri: uri,
        qr_svg,
        qr_text,
    })
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Fresh recovery codes (`XXXX-XXXX-XXXX-XXXX`, 80 bits each) and their digests.
pub fn recovery_codes() -> Result<Vec<(String, String)>, AccountError> {
    let mut out = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let bytes = crate::random::<16>()?;
        let chars: String = bytes
            .iter()
            .map(|b| CODE_ALPHABET[(*b as usize) % CODE_ALPHABET.len()] as char)
            .collect();
        let code = format!(
            "{}-{}-{}-{}",
            &chars[0..4],
            &chars[4..8],
            &chars[8..12],
            &chars[12..16]
        );
        let digest = recovery_digest(&code);
        out.push((code, digest));
    }
    Ok(out)
}

/// The digest of a recovery code as typed (case, dashes and spaces ignored).
pub fn recovery_digest(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    crate::token_digest(&norm)
}

/// Base64 of an SVG, for `data:` URLs.
pub fn svg_data_url(svg: &str) -> String {
    format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-256 rows (8 digits there; we check the
    /// last 6, which is what a 6-digit generator yields).
    #[test]
    fn rfc6238_sha256_vectors() {
        let seed = b"12345678901234567890123456789012";
        let t = generator(seed, TotpAlgorithm::Sha256, "PDS", "alice").unwrap();
        for (time, expected8) in [
            (59u64, "46119246"),
            (1111111109, "68084774"),
            (1111111111, "67062674"),
            (1234567890, "91819424"),
            (2000000000, "90698825"),
        ] {
            assert_eq!(t.generate(time).to_string(), expected8[2..], "time {time}");
        }
    }

    #[test]
    fn window_is_one_step_either_side() {
        let seed = [7u8; 32];
        let t = generator(&seed, TotpAlgorithm::Sha256, "PDS", "bob").unwrap();
        let now = 1_800_000_000u64;
        let step = now / STEP_SECS;
        let code_prev = t.generate(now - STEP_SECS).to_string();
        let code_next = t.generate(now + STEP_SECS).to_string();
        let code_old = t.generate(now - 2 * STEP_SECS).to_string();
        assert_eq!(matching_step(&t, &code_prev, now), Some(step - 1));
        assert_eq!(matching_step(&t, &code_next, now), Some(step + 1));
        if code_old != code_prev && code_old != t.generate(now).to_string() && code_old != code_next
        {
            assert_eq!(matching_step(&t, &code_old, now), None);
        }
        assert_eq!(matching_step(&t, "12345", now), None);
        assert_eq!(matching_step(&t, "abcdef", now), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut digests: Vec<_> = codes.iter().map(|c| c.1.clone()).collect();
        digests.sort();
        digests.dedup();
        assert_eq!(digests.len(), RECOVERY_CODES);
        let (code, digest) = &codes[0];
        assert_eq!(
            &recovery_digest(&code.to_lowercase().replace('-', " ")),
            digest
        );
    }

    #[test]
    fn sha1_is_refused() {
        assert!(TotpAlgorithm::parse("SHA1").is_err());
        assert_eq!(
            TotpAlgorithm::parse("sha-256").unwrap(),
            TotpAlgorithm::Sha256
        );
    }

    #[test]
    fn enrolment_uri_and_qr() {
        let t = generator(&[1u8; 32], TotpAlgorithm::Sha256, "PDS", "carol").unwrap();
        let e = enrolment(&t).unwrap();
        assert!(
            e.otpauth_uri.starts_with("otpauth://totp/PDS:carol?"),
            "{}",
            e.otpauth_uri
        );
        assert!(e.otpauth_uri.contains("algorithm=SHA256"));
        assert!(e.qr_svg.contains("<svg"));
        assert!(e.qr_text.lines().count() > 10);
    }
}
