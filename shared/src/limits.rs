//! A function's limits in force, computed once: from its manifest where it sets them,
//! from the defaults elsewhere. The node computes them once per deployment and uses
//! them as they are for admission, the deadline, fuel and the body caps; the gateway
//! computes them once per function, with its own defaults, for what it enforces itself
//! (the request body).

use std::time::Duration;

use crate::admission::FunctionLimits;
use crate::config::LimitDefaults;
use crate::manifest::Limits;

/// Room for the CGI head on top of a function's response body limit.
pub const CGI_HEAD_ALLOWANCE: usize = 16 << 10;

/// The limits a function runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// Longest one request may run.
    pub timeout: Duration,
    /// Largest linear memory of an instance, in MiB.
    pub memory_limit_mib: u64,
    /// Largest request body, in bytes.
    pub max_request_body_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_body_bytes: u64,
    /// Most requests running at once on one node; 0 = the node's slot count.
    pub max_concurrency: u32,
    /// Most requests waiting on one node.
    pub queue_depth: u32,
    /// Longest a request waits for capacity.
    pub queue_timeout: Duration,
}

impl EffectiveLimits {
    /// The limits of a function whose manifest says `limits`, under `defaults`.
    pub fn resolve(limits: &Limits, defaults: &LimitDefaults) -> EffectiveLimits {
        EffectiveLimits {
            timeout: Duration::from_millis(limits.timeout_ms.unwrap_or(defaults.timeout_ms)),
            memory_limit_mib: limits.memory_limit_mib.unwrap_or(defaults.memory_limit_mib),
            max_request_body_bytes: limits
                .max_request_body_bytes
                .unwrap_or(defaults.max_request_body_bytes),
            max_response_body_bytes: limits
                .max_response_body_bytes
                .unwrap_or(defaults.max_response_body_bytes),
            max_concurrency: limits.max_concurrency.unwrap_or(defaults.max_concurrency),
            queue_depth: limits.queue_depth.unwrap_or(defaults.queue_depth),
            queue_timeout: Duration::from_millis(
                limits.queue_timeout_ms.unwrap_or(defaults.queue_timeout_ms),
            ),
        }
    }

    /// Bytes an instance's memory may reach.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_limit_mib.saturating_mul(1 << 20)
    }

    /// How long a request may run: the function's timeout, shortened to what the gateway
    /// gives the node when it says.
    pub fn deadline(&self, from_gateway: Option<Duration>) -> Duration {
        from_gateway.map_or(self.timeout, |d| d.min(self.timeout))
    }

    /// The fuel (metering points) of one request, at `fuel_per_ms` per millisecond of
    /// the timeout.
    pub fn fuel(&self, fuel_per_ms: u64) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(fuel_per_ms)
    }

    /// Most bytes a function may write to stdout: its body limit plus room for the head.
    pub fn stdout_limit(&self) -> usize {
        usize::try_from(self.max_response_body_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(CGI_HEAD_ALLOWANCE)
    }

    /// What its requests are admitted under on a node of `slots` slots.
    pub fn admission(&self, slots: usize) -> FunctionLimits {
        FunctionLimits {
            max_concurrency: match self.max_concurrency {
                0 => slots,
                n => n as usize,
            },
            queue_depth: self.queue_depth as usize,
            queue_timeout: self.queue_timeout,
            memory: self.memory_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_wins_where_it_sets_a_limit_and_the_defaults_fill_the_rest() {
        let defaults = LimitDefaults::default();
        let limits = Limits {
            timeout_ms: Some(250),
            max_concurrency: Some(3),
            ..Limits::default()
        };
        let effective = EffectiveLimits::resolve(&limits, &defaults);
        assert_eq!(effective.timeout, Duration::from_millis(250));
        assert_eq!(effective.max_concurrency, 3);
        assert_eq!(effective.memory_limit_mib, defaults.memory_limit_mib);
        assert_eq!(effective.queue_depth, defaults.queue_depth);
        assert_eq!(
            effective.max_request_body_bytes,
            defaults.max_request_body_bytes
        );
    }

    #[test]
    fn derived_values_follow_the_limits() {
        let effective = EffectiveLimits::resolve(
            &Limits {
                timeout_ms: Some(100),
                memory_limit_mib: Some(32),
                max_response_body_bytes: Some(1000),
                max_concurrency: Some(0),
                ..Limits::default()
            },
            &LimitDefaults::default(),
        );
        assert_eq!(effective.fuel(1_000), 100_000);
        assert_eq!(effective.memory_bytes(), 32 << 20);
        assert_eq!(effective.stdout_limit(), 1000 + CGI_HEAD_ALLOWANCE);
        assert_eq!(effective.deadline(None), Duration::from_millis(100));
        assert_eq!(
            effective.deadline(Some(Duration::from_millis(40))),
            Duration::from_millis(40)
        );
        assert_eq!(
            effective.deadline(Some(Duration::from_secs(9))),
            Duration::from_millis(100),
            "the gateway cannot lengthen a function's timeout"
        );
        let admission = effective.admission(4);
        assert_eq!(admission.max_concurrency, 4, "0 means the node's slots");
        assert_eq!(admission.memory, 32 << 20);
        let huge = EffectiveLimits {
            timeout: Duration::MAX,
            ..effective
        };
        assert_eq!(huge.fuel(u64::MAX), u64::MAX, "saturates");
    }
}
