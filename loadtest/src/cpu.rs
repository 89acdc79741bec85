//! CPU time of a process on this machine, split by thread: where a server spends its
//! cycles during a run (for an edge node: `edge-worker-*` threads run wasm, tokio's
//! threads do QUIC, HTTP/3 and TLS).
//!
//! Read from `/proc/PID/task/*/stat` (Linux), in clock ticks of `USER_HZ` (100 on
//! every Linux this targets).

use std::collections::BTreeMap;
use std::path::Path;

const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds per thread group: thread names with trailing digits and separators cut
/// (`edge-worker-0` and `edge-worker-1` are `edge-worker`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CpuByThread(pub BTreeMap<String, f64>);

impl CpuByThread {
    /// Samples process `pid` now.
    pub fn sample(pid: u32) -> std::io::Result<CpuByThread> {
        let mut groups = BTreeMap::new();
        for task in std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task"))? {
            let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            if let Some((name, seconds)) = parse_stat(&stat) {
                *groups.entry(group_of(&name)).or_insert(0.0) += seconds;
            }
        }
        Ok(CpuByThread(groups))
    }

    /// CPU used between `earlier` and this sample, per group (threads that ended in
    /// between are lost, as the kernel forgets them).
    pub fn since(&self, earlier: &CpuByThread) -> CpuByThread {
        CpuByThread(
            self.0
                .iter()
                .map(|(group, s)| (group.clone(), s - earlier.0.get(group).unwrap_or(&0.0)))
                .filter(|(_, s)| *s > 0.0)
                .collect(),
        )
    }

    /// Total CPU seconds.
    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }
}

/// The thread name and its CPU seconds (user + system) from a `stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SECOND))
}

fn group_of(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_and_groups_threads() {
        let stat = "4242 (edge-worker-1) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 1 0 99";
        assert_eq!(parse_stat(stat), Some(("edge-worker-1".into(), 2.0)));
        // Names may hold spaces and parentheses.
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c".into(), 0.03)));
        assert_eq!(group_of("edge-worker-12"), "edge-worker");
        assert_eq!(group_of("tokio-runtime-w"), "tokio-runtime-w");
        let before = CpuByThread([("a".to_string(), 1.0)].into());
        let after = CpuByThread([("a".to_string(), 1.5), ("b".to_string(), 0.25)].into());
        let used = after.since(&before);
        assert_eq!(used.total(), 0.75);
    }

    #[test]
    fn a_busy_thread_shows_up_in_its_group() {
        let pid = std::process::id();
        let before = CpuByThread::sample(pid).unwrap();
        // Work until the kernel has charged at least one clock tick to the thread (a
        // bounded number of rounds, each a few milliseconds of arithmetic).
        let burner = std::thread::Builder::new()
            .name("cpu-burner-1".into())
            .spawn(move || {
                let mut x = 1u64;
                for _ in 0..2_000 {
                    for i in 0..1_000_000u64 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(i),
                        );
                    }
                    let used = CpuByThread::sample(pid).unwrap().since(&before);
                    if used.0.get("cpu-burner").is_some_and(|s| *s > 0.0) {
                        return used;
                    }
                }
                panic!("2e9 multiplications charged no CPU time to the thread");
            })
            .unwrap();
        let used = burner.join().unwrap();
        assert!(used.total() >= used.0["cpu-burner"], "{used:?}");
    }
}
