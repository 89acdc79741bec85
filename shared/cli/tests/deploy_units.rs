//! The systemd units of `deploy/` as systemd reads them: `systemd-analyze verify`
//! passes them without a warning (their binaries pointed at this build), and each keeps
//! the sandbox the fleet guide promises.

use std::process::Command;

use edge_cli::cluster::bin_dir;

/// `deploy/` in the repository.
fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn the_units_verify_and_keep_their_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir().unwrap();
    let mut units = Vec::new();
    for unit in ["edge-node.service", "edge-gateway.service"] {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
        for key in [
            "User=edge",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "StateDirectory=",
            "CapabilityBoundingSet=",
            "ExecStartPre=",
        ] {
            assert!(text.lines().any(|l| l.starts_with(key)), "{unit}: no {key}");
        }
        // Only the gateway may bind a port under 1024; nothing else is granted.
        let caps: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .collect();
        let allowed = if unit == "edge-gateway.service" {
            "CAP_NET_BIND_SERVICE"
        } else {
            ""
        };
        assert_eq!(caps, [allowed], "{unit}");
        let here = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, here).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect(
            "systemd-analyze (Debian's systemd package; scripts/install-test-deps.sh installs it)",
        );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}
