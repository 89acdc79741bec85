//! Clients edge did not write: aioquic (HTTP/3) and curl (HTTP/1.1 and HTTP/2) against a
//! real gateway. `.ci/run` installs both; a missing one fails the test rather than
//! skipping it.

mod support;

use std::process::Command;

use edge_shared::manifest::Limits;
use support::{function, repo_root, start};

#[test]
fn aioquic_gets_hello_over_http3() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let port = cluster.gateway_addr().port().to_string();
    let script = repo_root().join("gateway/tests/interop/aioquic_get.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &port, "localhost", "/hello?name=aioquic"])
        .arg(&cluster.certs().ca)
        .output()
        .expect("running python3 (install aioquic: pip install aioquic)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "aioquic client failed:\n{stderr}");
    assert!(stdout.contains(":status: 200"), "{stdout}");
    assert!(stdout.contains("x-edge-node: node-1"), "{stdout}");
    // "hello, aioquic!\n": the node's length, passed on.
    assert!(stdout.contains("content-length: 16"), "{stdout}");
    assert!(stdout.ends_with("hello, aioquic!\n"), "{stdout}");
}

/// A short answer goes out whole with its length (from the node), not chunked: over
/// HTTP/1.1 it used to take two TLS records and two writes.
#[test]
fn curl_gets_hello_over_http1_and_http2_with_alt_svc_and_its_length() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let port = cluster.gateway_addr().port();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let output = Command::new("curl")
            .args(["-sS", "-i", flag, "--cacert"])
            .arg(&cluster.certs().ca)
            .args(["-w", "\nversion=%{http_version}"])
            .arg(format!("https://127.0.0.1:{port}/hello"))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains(&format!("version={version}")), "{text}");
        assert!(text.lines().next().unwrap().contains(" 200"), "{text}");
        assert!(
            text.to_lowercase()
                .contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
            "{text}"
        );
        assert!(text.contains("hello, world!"), "{text}");
        let lower = text.to_lowercase();
        assert!(lower.contains("content-length: 14\r\n"), "{text}");
        assert!(!lower.contains("transfer-encoding"), "{text}");
    }
}
