//! `edge-loadtest`: an HTTP/3 load generator for edge clusters.
//!
//! - [`scenario`]: what to load (a weighted mix of requests) and how: closed loop (a fixed
//!   number in flight) or open loop (a fixed or ramping arrival rate), from a TOML file
//!   and flags;
//! - [`mod@run`]: drives it over quinn + h3, latency counted from each request's scheduled
//!   time in open loop (coordinated omission corrected);
//! - [`tally`]: HdrHistogram percentiles overall, per request and per second; answers by
//!   status and node; errors by kind; cold starts, and the time spent in the cluster, a
//!   node's queue and the guest from `server-timing`;
//! - [`svg`]: plots; [`baseline`]: the bare quinn + h3 server every figure can be put
//!   against; [`compare`]: one scenario under each routing policy; [`cpu`]: a server's
//!   CPU time by thread group.

pub mod baseline;
pub mod compare;
pub mod cpu;
pub mod run;
pub mod scenario;
pub mod svg;
pub mod tally;

use std::time::Duration;

pub use run::run;
pub use scenario::{Load, Scenario};
pub use tally::Report;

/// Parses `250ms`, `10s`, `2m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?}: expected a number then ms, s or m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("duration {text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
