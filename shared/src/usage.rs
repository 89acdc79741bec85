//! What a node's usage meter reports (`GET /_edge/v1/usage`), and what gateways sum
//! over the cluster for `GET /v1/usage`.

use serde::{Deserialize, Serialize};

use crate::manifest::DeploymentId;

/// What a deployment used in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Calls run (answered by the function or failed in it).
    pub invocations: u64,
    /// Of those, the ones that failed: a trap, a limit, a status of 500 or more.
    pub errors: u64,
    /// Time in the guest, in microseconds.
    pub run_us: u64,
    /// Fuel consumed (wasm operators, plus host calls' copies).
    pub fuel: u64,
    /// The largest linear memory a call ended with, in bytes.
    pub peak_memory_bytes: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response bytes the function wrote (head and body).
    pub bytes_out: u64,
}

impl Counters {
    /// Adds `other`'s counts (the peak is the larger).
    pub fn add(&mut self, other: &Counters) {
        self.invocations += other.invocations;
        self.errors += other.errors;
        self.run_us += other.run_us;
        self.fuel += other.fuel;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// One deployment in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentUsage {
    /// Its id.
    pub deployment: DeploymentId,
    /// Its function.
    pub function: String,
    /// What it used in the window.
    #[serde(flatten)]
    pub counters: Counters,
}

/// A node's usage in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The node.
    pub node: String,
    /// When counting began on this node (Unix ms).
    pub counting_since_ms: u64,
    /// The window's start (Unix ms): `since` rounded down to its hour, or when counting
    /// began if later.
    pub from_ms: u64,
    /// The window's end: now.
    pub to_ms: u64,
    /// Each deployment that ran in the window.
    pub deployments: Vec<DeploymentUsage>,
}
