//! A home whose storage is an S3-compatible server: load, then query.
//!
//! Needs `PDS_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:9100`, a moto or
//! MinIO server that accepts any credentials); `.ci/run` starts one. Without
//! it the test says so and checks nothing else.

use std::io::{Read, Write};
use std::process::Command;

fn pds() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pds"));
    // Statements and changes are recorded under an account name.
    c.env("PDS_USER", "steward");
    c
}

/// Creates a bucket with a bare HTTP request (the test servers do not check
/// signatures for bucket creation).
fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn load_and_query_on_s3_compatible_storage() {
    let Ok(endpoint) = std::env::var("PDS_TEST_S3_ENDPOINT") else {
        eprintln!("PDS_TEST_S3_ENDPOINT is not set: S3 test not run (.ci/run sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let bucket = format!("pds-test-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let o = pds()
        .arg("--home")
        .arg(&home)
        .args(["init", "--master-key-file"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let cfg = cfg
        .replace(
            "url = \"file://objects\"",
            &format!("url = \"s3://{bucket}/prod\"\ns3_endpoint = \"{endpoint}\"\ns3_region = \"us-east-1\""),
        )
        .replace("# s3_endpoint = ", "# example: s3_endpoint = ")
        .replace("# s3_region = ", "# example: s3_region = ");
    std::fs::write(home.join("config.toml"), cfg).unwrap();
    let delivery = dir.path().join("delivery");
    let o = pds()
        .args(["synth", "-q", "-n", "60", "--years", "2021", "--out"])
        .arg(&delivery)
        .output()
        .unwrap();
    assert!(o.status.success());
    let with_creds = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", "pds-test")
            .env("AWS_SECRET_ACCESS_KEY", "pds-test-secret");
    };
    let mut c = pds();
    c.arg("--home")
        .arg(&home)
        .args(["load", "-q"])
        .arg(&delivery);
    with_creds(&mut c);
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(&format!("s3://{bucket}/prod")), "{out}");
    // Nothing went to the local folder.
    assert!(!home.join("objects/snapshots").exists());
    // The snapshot reads back from the bucket.
    let ben = std::fs::read_to_string(delivery.join("IR_BEN_R.csv")).unwrap();
    let mut c = pds();
    c.arg("--home").arg(&home).args([
        "sql",
        "--format",
        "csv",
        "SELECT COUNT(*) AS n FROM IR_BEN_R",
    ]);
    with_creds(&mut c);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("n\n{}\n", ben.lines().count() - 1)
    );
}
