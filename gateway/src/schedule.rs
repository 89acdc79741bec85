//! Scheduled triggers: a function deployed with a cron schedule (UTC) is invoked on each
//! of its ticks, a `POST` to its first route. A schedule is the standard 5 fields
//! (minute, hour, day of month, month, day of week), or 6 with a leading seconds field
//! for ticks closer than a minute apart.
//!
//! Each tick fires at most once across all gateways: the gateway holding the scheduler
//! lease ([`Registry::lease`]) claims the tick in the registry by compare-and-set
//! ([`Registry::claim_tick`]) and invokes only a tick it won. Ticks missed while no
//! gateway was running are not replayed: only the latest tick is due, and only while at
//! most [`LATE`] old ([`due`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use edge_net::lifecycle::Shutdown;

use edge_shared::manifest::Route;

use crate::proxy::Gateway;
use crate::registry::{Registry, RunRecord, now_ms};
use crate::route::Routed;

/// How late a tick may still be fired; older ones are skipped.
pub const LATE: Duration = Duration::from_secs(30);
/// How often the scheduler looks for due ticks.
const EVERY: Duration = Duration::from_millis(250);
/// How long the scheduler lease lasts unless renewed.
pub const LEASE: Duration = Duration::from_secs(10);

/// A parsed 5-field cron schedule.
pub struct Schedule(Cron);

impl Schedule {
    /// Parses `text`: minute, hour, day of month, month, day of week, optionally after
    /// a seconds field, in the standard syntax (`*/5`, `1-5`, `MON`, ...).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        if !matches!(text.split_whitespace().count(), 5 | 6) {
            return Err(format!(
                "{text:?} is not 5 fields (minute hour day-of-month month day-of-week), \
                 or 6 with seconds first"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        parser
            .parse(text)
            .map(Schedule)
            .map_err(|e| format!("{text:?}: {e}"))
    }

    /// The latest tick at or before `at_ms` (Unix milliseconds).
    pub fn last_tick(&self, at_ms: u64) -> Option<u64> {
        let at = utc(at_ms)?;
        let tick = self.0.find_previous_occurrence(&at, true).ok()?;
        u64::try_from(tick.timestamp_millis()).ok()
    }

    /// The first tick after `at_ms`.
    pub fn next_tick(&self, at_ms: u64) -> Option<u64> {
        let at = utc(at_ms)?;
        let tick = self.0.find_next_occurrence(&at, false).ok()?;
        u64::try_from(tick.timestamp_millis()).ok()
    }
}

/// The tick of `schedule` due at `now_ms`, if any: its latest tick, unless claimed
/// already (`claimed_ms` is the last tick claimed) or older than [`LATE`]. Ticks before
/// the latest are never due: a gateway back after an outage fires one tick, not every
/// one it missed.
pub fn due(schedule: &Schedule, claimed_ms: u64, now_ms: u64) -> Option<u64> {
    let tick = schedule.last_tick(now_ms)?;
    let fresh = now_ms.saturating_sub(tick) <= LATE.as_millis() as u64;
    (fresh && tick > claimed_ms).then_some(tick)
}

/// `ms` as a UTC time, to the whole second (croner keeps a fraction it is given).
fn utc(ms: u64) -> Option<DateTime<Utc>> {
    let ms = ms - ms % 1000;
    Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single()
}

/// Fires the gateway's scheduled functions until `stop`: while it holds the lease, each
/// due tick that it claims is invoked once and its run recorded.
pub async fn run(
    gateway: Arc<Gateway>,
    registry: Arc<dyn Registry>,
    holder: String,
    stop: Shutdown,
) {
    let stopped = stop.fired();
    tokio::pin!(stopped);
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = &mut stopped => return,
        }
        match registry.lease(&holder, LEASE).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: the lease could not be read");
                continue;
            }
        }
        let now = now_ms();
        let functions = gateway.functions();
        for served in &functions.list {
            let Some(text) = &served.schedule else {
                continue;
            };
            let Ok(schedule) = Schedule::parse(text) else {
                continue;
            };
            // The registry's claim is what keeps a tick to one run; `due` only skips
            // what is stale.
            let Some(tick) = due(&schedule, 0, now) else {
                continue;
            };
            match registry.claim_tick(&served.name, tick).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(function = %served.name, error = %e, "scheduler: the tick could not be claimed");
                    continue;
                }
            }
            let (gateway, registry) = (Arc::clone(&gateway), Arc::clone(&registry));
            let name = served.name.clone();
            tokio::spawn(async move {
                let status = gateway.invoke_scheduled(&name, tick).await;
                let late_ms = now_ms().saturating_sub(tick);
                if status.is_success() {
                    tracing::info!(function = %name, tick, status = status.as_u16(), late_ms, "scheduled run");
                } else {
                    tracing::warn!(function = %name, tick, status = status.as_u16(), late_ms, "scheduled run failed");
                }
                let run = RunRecord {
                    tick_ms: tick,
                    status: status.as_u16(),
                };
                if let Err(e) = registry.record_run(&name, run).await {
                    tracing::warn!(function = %name, error = %e, "scheduler: the run could not be recorded");
                }
            });
        }
    }
}

impl Gateway {
    /// Invokes function `name`'s primary version for `tick`: a `POST` with an empty body
    /// to its first route, header `edge-schedule-tick` the tick's time (RFC 3339).
    /// Returns the status it answered, or the gateway's own when it could not.
    pub async fn invoke_scheduled(&self, name: &str, tick: u64) -> http::StatusCode {
        let functions = self.functions();
        let Some(served) = functions.named(name) else {
            return http::StatusCode::NOT_FOUND;
        };
        let function = Arc::clone(served.primary());
        let (authority, path, script_name) = match function.manifest.routes.first() {
            Some(Route::Path(p)) => (self.config().domain.clone(), p.clone(), p.clone()),
            Some(Route::Host(h)) => (h.clone(), "/".to_string(), String::new()),
            None => return http::StatusCode::NOT_FOUND,
        };
        let time = utc(tick).map(|t| t.to_rfc3339()).unwrap_or_default();
        let Ok(request) = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{authority}{path}"))
            .header(http::header::USER_AGENT, "edge-scheduler")
            .header("edge-schedule-tick", time)
            .body(())
        else {
            return http::StatusCode::BAD_REQUEST;
        };
        let routed = Routed::to(function, script_name);
        let forwarded = self.forward(routed, request, bytes::Bytes::new()).await;
        forwarded.head.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_outage_only_the_latest_tick_is_due_and_only_while_fresh() {
        let minutely = Schedule::parse("* * * * *").unwrap();
        // 2026-12-01T00:07:30Z, after ten minutes with no gateway: ticks at 23:58 to
        // 00:07 were missed; only 00:07:00 is due.
        let at = 1_796_083_650_000;
        let latest = 1_796_083_620_000;
        let claimed_before_outage = latest - 10 * 60_000;
        assert_eq!(due(&minutely, claimed_before_outage, at), Some(latest));
        // Claimed: nothing more is due until the next tick.
        assert_eq!(due(&minutely, latest, at), None);
        assert_eq!(
            due(&minutely, latest, latest + 60_000),
            Some(latest + 60_000)
        );
        // A tick older than LATE is skipped, not fired late.
        assert_eq!(
            due(&minutely, 0, latest + LATE.as_millis() as u64 + 1),
            None
        );
    }

    #[test]
    fn five_fields_parse_and_others_are_refused_naming_why() {
        let every_five = Schedule::parse("*/5 * * * *").unwrap();
        // 2026-12-01T00:07:30Z
        let at = 1_796_083_650_000;
        assert_eq!(every_five.last_tick(at), Some(1_796_083_500_000));
        assert_eq!(every_five.next_tick(at), Some(1_796_083_800_000));
        assert!(Schedule::parse("0 9 * * MON-FRI").is_ok());
        let every_two_seconds = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(every_two_seconds.next_tick(at), Some(at + 2_000));
        for bad in [
            "* * * *",
            "0 */5 * * * * *",
            "61 * * * *",
            "* * * * BLUE",
            "",
        ] {
            let err = Schedule::parse(bad).err().unwrap();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
