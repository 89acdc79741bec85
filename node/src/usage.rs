//! Usage metering, what a pay-per-use bill is made of: per deployment (a function's
//! version) and per hour, its invocations, errors, run time, fuel, peak memory and bytes
//! in and out. Kept in `state_dir/usage.json`, written every `usage_flush_ms` and when
//! the node stops, so the counts survive a restart; a crash loses at most the last
//! interval's. The report says from when it counts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_shared::manifest::DeploymentId;
pub use edge_shared::usage::{Counters, DeploymentUsage, UsageReport};
use serde::{Deserialize, Serialize};

/// An hour, in milliseconds: the granularity of `since`.
pub const HOUR_MS: u64 = 3_600_000;
/// Hours kept: 35 days, a month's bill and some.
const KEPT_HOURS: u64 = 35 * 24;

/// One call's usage.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallUsage {
    /// Whether it failed.
    pub error: bool,
    /// Time in the guest.
    pub run: Duration,
    /// Fuel consumed.
    pub fuel: u64,
    /// Its linear memory at the end, in bytes.
    pub memory_bytes: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response bytes.
    pub bytes_out: u64,
}

impl CallUsage {
    fn counters(&self) -> Counters {
        Counters {
            invocations: 1,
            errors: u64::from(self.error),
            run_us: u64::try_from(self.run.as_micros()).unwrap_or(u64::MAX),
            fuel: self.fuel,
            peak_memory_bytes: self.memory_bytes,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }
}

/// One deployment's usage, by the hour it started at (Unix ms).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Metered {
    function: String,
    hours: BTreeMap<u64, Counters>,
}

/// What `usage.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// When counting began (Unix ms): nothing before it is known.
    counting_since_ms: u64,
    deployments: HashMap<DeploymentId, Metered>,
}

/// The node's usage, kept in a file.
pub struct Usage {
    file: PathBuf,
    ledger: Mutex<Ledger>,
    dirty: AtomicBool,
}

impl Usage {
    /// The usage kept in `file`, or none yet (counting from `now_ms`). A file that does
    /// not parse is kept aside as `usage.json.unreadable` and counting starts again:
    /// a node does not stop serving over its meter.
    pub fn open(file: &Path, now_ms: u64) -> Usage {
        let fresh = || Ledger {
            counting_since_ms: now_ms,
            deployments: HashMap::new(),
        };
        let ledger = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let aside = file.with_extension("json.unreadable");
                tracing::error!(file = %file.display(), error = %e, aside = %aside.display(), "usage file unreadable: kept aside, counting again from now");
                let _ = std::fs::rename(file, &aside);
                fresh()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "usage file unreadable: counting again from now");
                fresh()
            }
        };
        Usage {
            file: file.to_path_buf(),
            ledger: Mutex::new(ledger),
            dirty: AtomicBool::new(false),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one call of `deployment` (of `function`) at `now_ms`.
    pub fn record(&self, deployment: &DeploymentId, function: &str, call: &CallUsage, now_ms: u64) {
        let hour = now_ms - now_ms % HOUR_MS;
        let mut ledger = self.ledger();
        let metered = match ledger.deployments.get_mut(deployment) {
            Some(m) => m,
            None => ledger
                .deployments
                .entry(deployment.clone())
                .or_insert_with(|| Metered {
                    function: function.to_string(),
                    hours: BTreeMap::new(),
                }),
        };
        metered.hours.entry(hour).or_default().add(&call.counters());
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Usage from `since_ms` (rounded down to its hour; all kept when `None`) to
    /// `now_ms`, as `node` reports it.
    pub fn report(&self, node: &str, since_ms: Option<u64>, now_ms: u64) -> UsageReport {
        let ledger = self.ledger();
        let from_hour = since_ms.map_or(0, |s| s - s % HOUR_MS);
        let mut deployments: Vec<DeploymentUsage> = ledger
            .deployments
            .iter()
            .filter_map(|(id, metered)| {
                let mut counters = Counters::default();
                for c in metered.hours.range(from_hour..).map(|(_, c)| c) {
                    counters.add(c);
                }
                (counters.invocations > 0).then(|| DeploymentUsage {
                    deployment: id.clone(),
                    function: metered.function.clone(),
                    counters,
                })
            })
            .collect();
        deployments.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        UsageReport {
            node: node.to_string(),
            counting_since_ms: ledger.counting_since_ms,
            from_ms: from_hour.max(ledger.counting_since_ms),
            to_ms: now_ms,
            deployments,
        }
    }

    /// Writes the usage to its file if it changed (a new file renamed over the old, so
    /// a crash mid-write leaves the previous one), dropping hours past those kept.
    pub fn flush(&self, now_ms: u64) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let oldest = now_ms.saturating_sub(KEPT_HOURS * HOUR_MS);
        let text = {
            let mut ledger = self.ledger();
            for metered in ledger.deployments.values_mut() {
                metered.hours.retain(|&hour, _| hour >= oldest);
            }
            ledger.deployments.retain(|_, m| !m.hours.is_empty());
            serde_json::to_vec(&*ledger).map_err(std::io::Error::other)?
        };
        let written = (|| {
            if let Some(dir) = self.file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let partial = self.file.with_extension("json.partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &self.file)
        })();
        if written.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// The file it is kept in.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(&format!("{s}@00000000000000a1")).unwrap()
    }

    fn call(run_us: u64, error: bool) -> CallUsage {
        CallUsage {
            error,
            run: Duration::from_micros(run_us),
            fuel: 10,
            memory_bytes: 65536 * run_us,
            bytes_in: 3,
            bytes_out: 7,
        }
    }

    #[test]
    fn calls_sum_per_deployment_and_hour_and_since_selects_hours() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 100 * HOUR_MS + 5;
        let usage = Usage::open(&dir.path().join("usage.json"), t0);
        usage.record(&id("fib"), "fib", &call(100, false), t0);
        usage.record(&id("fib"), "fib", &call(50, true), t0 + 10);
        usage.record(&id("fib"), "fib", &call(20, false), t0 + HOUR_MS);
        usage.record(&id("hello"), "hello", &call(1, false), t0 + HOUR_MS);

        let all = usage.report("n", None, t0 + HOUR_MS);
        assert_eq!(all.from_ms, t0, "counting began at t0");
        let fib = &all.deployments[0];
        assert_eq!(fib.function, "fib");
        assert_eq!(
            fib.counters,
            Counters {
                invocations: 3,
                errors: 1,
                run_us: 170,
                fuel: 30,
                peak_memory_bytes: 65536 * 100,
                bytes_in: 9,
                bytes_out: 21
            }
        );
        // Since the second hour: its calls only, the window starting on the hour.
        let later = usage.report("n", Some(t0 + HOUR_MS + 30), t0 + HOUR_MS);
        assert_eq!(later.from_ms, 101 * HOUR_MS);
        assert_eq!(later.deployments.len(), 2);
        assert_eq!(later.deployments[0].counters.invocations, 1);
        assert_eq!(later.deployments[0].counters.run_us, 20);
    }

    #[test]
    fn counts_survive_a_reopen_and_an_unreadable_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/usage.json");
        let usage = Usage::open(&file, 1_000);
        usage.record(&id("fib"), "fib", &call(5, false), 2_000);
        usage.flush(2_000).unwrap();
        let reopened = Usage::open(&file, 9_999_999);
        let report = reopened.report("n", None, 3_000);
        assert_eq!(report.counting_since_ms, 1_000);
        assert_eq!(report.deployments[0].counters.invocations, 1);

        std::fs::write(&file, b"{ not json").unwrap();
        let fresh = Usage::open(&file, 5_000);
        assert_eq!(fresh.report("n", None, 5_000).counting_since_ms, 5_000);
        assert!(file.with_extension("json.unreadable").is_file());
    }

    #[test]
    fn hours_past_those_kept_are_dropped_at_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Usage::open(&dir.path().join("usage.json"), 0);
        usage.record(&id("old"), "old", &call(1, false), HOUR_MS);
        let now = (KEPT_HOURS + 5) * HOUR_MS;
        usage.record(&id("new"), "new", &call(1, false), now);
        usage.flush(now).unwrap();
        let report = usage.report("n", None, now);
        let names: Vec<&str> = report
            .deployments
            .iter()
            .map(|d| d.function.as_str())
            .collect();
        assert_eq!(names, ["new"]);
    }
}
