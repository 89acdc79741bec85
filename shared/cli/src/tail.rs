//! How `edge tail` prints the events of `GET /v1/functions/{name}/tail`.

use serde_json::Value;

/// Where a line of `edge tail` goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Shown {
    /// A call or a log line of the function: stdout.
    Event(String),
    /// News of the tail itself (a node tailed, lines dropped or missed): stderr.
    Notice(String),
}

/// The line `edge tail` prints for `event`, or `None` for one it does not know.
pub fn show(event: &Value) -> Option<Shown> {
    let text = |key: &str| event[key].as_str().unwrap_or("-");
    let origin = || {
        let version = event["version"]
            .as_u64()
            .map_or_else(|| "v?".to_string(), |v| format!("v{v}"));
        format!("{:<10} {version:<4} {}", text("node"), text("request_id"))
    };
    let shown = match text("kind") {
        "call" => Shown::Event(format!(
            "{} {} {:.1} ms",
            origin(),
            event["status"],
            event["ms"].as_f64().unwrap_or(0.0)
        )),
        "log" => Shown::Event(format!("{} | {}", origin(), text("line"))),
        "tailing" => Shown::Notice(format!("tailing {}", text("node"))),
        "dropped" => Shown::Notice(format!(
            "{} lines dropped: over the gateway's {}",
            event["lines"],
            text("limit")
        )),
        "missed" => Shown::Notice(format!(
            "{}: {} events missed (the tail fell behind)",
            text("node"),
            event["events"]
        )),
        _ => return None,
    };
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_log_lines_name_node_version_and_request() {
        let call = serde_json::json!({"kind": "call", "node": "node-1", "version": 3,
            "request_id": "ab12", "status": 200, "ms": 1.25});
        assert_eq!(
            show(&call),
            Some(Shown::Event("node-1     v3   ab12 200 1.2 ms".into()))
        );
        let log = serde_json::json!({"kind": "log", "node": "node-2", "request_id": "cd34", "line": "hi"});
        assert_eq!(
            show(&log),
            Some(Shown::Event("node-2     v?   cd34 | hi".into()))
        );
        let dropped = serde_json::json!({"kind": "dropped", "lines": 7, "limit": "admin.tail_lines_per_second"});
        assert_eq!(
            show(&dropped),
            Some(Shown::Notice(
                "7 lines dropped: over the gateway's admin.tail_lines_per_second".into()
            ))
        );
        assert_eq!(show(&serde_json::json!({"kind": "new"})), None);
    }
}
