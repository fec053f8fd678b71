//! Helpers shared by the tests that drive `pds serve` with real clients:
//! process output, and HTTP through curl (with `-k`: the servers use
//! self-signed test certificates).

use std::process::{Command, Output};

/// Stdout of a command that must succeed (else both streams in the panic).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of a command.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs curl with `args`; returns the HTTP status and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or((&out, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// POSTs JSON with an optional bearer token; returns status and body.
pub fn post_json(url: &str, bearer: Option<&str>, body: &serde_json::Value) -> (u16, String) {
    let auth = bearer.map(|t| format!("authorization: Bearer {t}"));
    let body = body.to_string();
    let mut args = vec![
        "-X",
        "POST",
        url,
        "-H",
        "content-type: application/json",
        "-d",
        &body,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(&args)
}
