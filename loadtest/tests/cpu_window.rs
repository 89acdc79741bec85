//! `--cpu-of` counts a server's CPU time over the measured window only, as the
//! generator's own: a run's warm-up must not be charged to the requests measured after
//! it (it once was, which overstated a whole-path run's CPU per request by the warm-up's
//! share: 1.4× with a 2 s warm-up and 5 s measured).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use edge_cli::cluster::bin_dir;

/// Kills its process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `edge-loadtest baseline` on a free loopback port; its address.
fn baseline(dir: &Path) -> (Killed, String) {
    let announce = dir.join("addr");
    let server = Command::new(bin_dir().unwrap().join("edge-loadtest"))
        .args(["baseline", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .arg("--announce")
        .arg(&announce)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Killed(server);
    for _ in 0..500 {
        if let Ok(addr) = std::fs::read_to_string(&announce)
            && !addr.trim().is_empty()
        {
            return (server, addr.trim().to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the baseline server did not announce its address within 10 s");
}

#[test]
fn cpu_of_counts_the_measured_window_not_the_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = baseline(dir.path());
    // A process that burns 0.3 s of CPU as soon as it starts, then sleeps: all of its
    // CPU time falls in the run's 4 s warm-up.
    let mut burner = Command::new("python3")
        .args([
            "-c",
            "import time\n\
             while time.process_time() < 0.3: pass\n\
             print('burnt', flush=True)\n\
             time.sleep(60)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = burner.id().to_string();
    let burnt = BufReader::new(burner.stdout.take().unwrap());
    let burner = Killed(burner);
    let out = dir.path().join("r.json");
    let port = addr.rsplit(':').next().unwrap();
    let run = Command::new(bin_dir().unwrap().join("edge-loadtest"))
        .arg(format!("https://localhost:{port}/"))
        .args(["--connect", &addr, "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--connections", "1", "--streams", "2"])
        .args(["--warmup", "4s", "--duration", "1s", "--quiet"])
        .args(["--cpu-of", &pid, "--json", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The burner had finished before the run ended (else the check below says nothing).
    let line = burnt.lines().next().unwrap().unwrap();
    assert_eq!(line, "burnt");
    drop(burner);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cpu = report["target"]["target_cpu"]
        .as_object()
        .unwrap_or_else(|| panic!("no target_cpu in {report}"));
    let total: f64 = cpu.values().map(|s| s.as_f64().unwrap()).sum();
    assert!(
        total < 0.15,
        "the warm-up's 0.3 s of CPU was charged to the measured window: {cpu:?}"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains(&format!("cpu of {pid}: ")), "{stdout}");
}
