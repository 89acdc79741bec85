//! How `edge usage` asks for and prints `GET /v1/usage`: a billing-style table per
//! function and version.

use anyhow::{Context, bail};
use serde_json::Value;

use crate::admin::time_text;

/// The `since` query for `--since`: a duration back from `now` (`90s`, `30m`, `2h`,
/// `7d`) or an RFC 3339 time, as RFC 3339.
pub fn since_query(since: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(since) {
        return Ok(at
            .to_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let split = since
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(since.len());
    let (count, unit) = since.split_at(split);
    let count: i64 = count.parse().with_context(|| {
        format!("--since {since:?}: a duration (30m, 2h, 7d) or an RFC 3339 time")
    })?;
    let back = match unit {
        "s" => chrono::Duration::seconds(count),
        "m" => chrono::Duration::minutes(count),
        "h" => chrono::Duration::hours(count),
        "d" => chrono::Duration::days(count),
        _ => bail!("--since {since:?}: the unit is s, m, h or d"),
    };
    Ok((now - back).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How much later than the window's start a node may begin counting without a note.
const LATER_MS: u64 = 60_000;

/// The report as a table, and its notes (nodes that did not answer, or count from
/// later than the window's start) for stderr.
pub fn usage_table(report: &Value) -> (String, Vec<String>) {
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "usage from {} to {} (UTC), {} node{}\n",
        time_text(&report["from_ms"]),
        time_text(&report["to_ms"]),
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    out += &format!(
        "{:<16} {:>7} {:>10} {:>7} {:>12} {:>14} {:>11} {:>10} {:>10}\n",
        "FUNCTION", "VERSION", "CALLS", "ERRORS", "RUN TIME", "FUEL", "PEAK MEMORY", "IN", "OUT"
    );
    let row = |name: &str, version: String, c: &Value| {
        format!(
            "{:<16} {:>7} {:>10} {:>7} {:>10.3} s {:>14} {:>11} {:>10} {:>10}\n",
            name,
            version,
            c["invocations"].as_u64().unwrap_or(0),
            c["errors"].as_u64().unwrap_or(0),
            c["run_us"].as_u64().unwrap_or(0) as f64 / 1e6,
            c["fuel"].as_u64().unwrap_or(0),
            bytes_text(c["peak_memory_bytes"].as_u64().unwrap_or(0)),
            bytes_text(c["bytes_in"].as_u64().unwrap_or(0)),
            bytes_text(c["bytes_out"].as_u64().unwrap_or(0)),
        )
    };
    for f in report["functions"].as_array().into_iter().flatten() {
        let name = f["function"].as_str().unwrap_or_default();
        out += &row(name, "all".into(), f);
        for v in f["versions"].as_array().into_iter().flatten() {
            let version = v["version"]
                .as_u64()
                .map_or_else(|| "gone".to_string(), |n| format!("v{n}"));
            out += &row("", version, v);
        }
    }
    let mut notes = Vec::new();
    for n in report["unanswered"].as_array().into_iter().flatten() {
        notes.push(format!(
            "{} did not answer ({}): its usage is missing",
            n["node"].as_str().unwrap_or("?"),
            n["error"].as_str().unwrap_or("?")
        ));
    }
    // A node that began counting well after the others (it joined later, or lost its
    // state) is named: the window is not all its own.
    let from = report["from_ms"].as_u64().unwrap_or(0);
    for n in &nodes {
        if n["from_ms"].as_u64().unwrap_or(0) > from + LATER_MS {
            notes.push(format!(
                "{} counts from {} only",
                n["node"].as_str().unwrap_or("?"),
                time_text(&n["from_ms"])
            ));
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(since_query("2h", now).unwrap(), "2026-12-01T10:00:00Z");
        assert_eq!(since_query("7d", now).unwrap(), "2026-11-24T12:00:00Z");
        assert_eq!(
            since_query("2026-11-30T00:00:00+01:00", now).unwrap(),
            "2026-11-29T23:00:00Z"
        );
        assert!(
            since_query("2w", now)
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
        assert!(since_query("soon", now).is_err());
    }

    #[test]
    fn the_table_has_a_row_per_function_and_version_and_names_what_is_missing() {
        let report = serde_json::json!({
            "from_ms": 0, "to_ms": 3_600_000,
            "nodes": [{"node": "node-1", "from_ms": 0}, {"node": "node-2", "from_ms": 60_001}, {"node": "node-4", "from_ms": 5}],
            "unanswered": [{"node": "node-3", "error": "no answer"}],
            "functions": [{"function": "fib", "invocations": 5, "errors": 1, "run_us": 2_500_000,
                "fuel": 9, "peak_memory_bytes": 1_572_864, "bytes_in": 0, "bytes_out": 2048,
                "versions": [{"version": 2, "invocations": 5, "errors": 1, "run_us": 2_500_000,
                    "fuel": 9, "peak_memory_bytes": 1_572_864, "bytes_in": 0, "bytes_out": 2048}]}]
        });
        let (table, notes) = usage_table(&report);
        assert!(table.contains("3 nodes"), "{table}");
        assert!(
            table.contains("fib                  all          5       1      2.500 s"),
            "{table}"
        );
        assert!(table.contains("fib"), "{table}");
        assert!(table.contains("v2") && table.contains("2.500 s"), "{table}");
        assert!(
            table.contains("1.5 MiB") && table.contains("2.0 KiB"),
            "{table}"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("node-3 did not answer"));
        assert!(notes[1].contains("node-2 counts from"));
    }
}
