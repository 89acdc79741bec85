//! A function's stderr as log lines: bounded per request in bytes and lines, control
//! characters escaped, each line carrying the function, the request id and the trace
//! id, and sent to `edge tail` watchers when there are any.

use std::sync::Arc;

use http::HeaderValue;
use tokio::sync::broadcast;

use crate::tail::{TailEvent, TailKind};

/// Whom a call's log lines name, and where else they go. Made for every call, so it
/// holds only what the call had already; the trace id is read from `traceparent` when a
/// line needs it.
#[derive(Debug, Clone, Default)]
pub struct LogContext {
    /// The request id the gateway gave.
    pub request_id: String,
    /// The `traceparent` the gateway sent, if any.
    pub traceparent: Option<HeaderValue>,
    /// `edge tail` watchers, when there are any.
    pub tail: Option<Tail>,
}

/// Where a watched call's events go.
#[derive(Debug, Clone)]
pub struct Tail {
    /// The watchers' channel.
    pub events: broadcast::Sender<Arc<TailEvent>>,
    /// The call's deployment id.
    pub deployment: String,
}

impl LogContext {
    /// The context of a call with no trace and no watcher (benchmarks, tests).
    pub fn of_request(request_id: &str) -> LogContext {
        LogContext {
            request_id: request_id.to_string(),
            ..LogContext::default()
        }
    }
}

/// The W3C trace id of a `traceparent` header, `-` when there is none or it is not
/// well-formed.
pub fn trace_id(traceparent: Option<&HeaderValue>) -> String {
    traceparent
        .and_then(|v| v.to_str().ok())
        .and_then(edge_shared::trace::TraceContext::parse)
        .map_or_else(|| "-".to_string(), |t| t.trace_id_hex())
}

/// Most bytes of stderr kept per request; the rest is counted and dropped.
const MAX_LOG_BYTES: usize = 64 << 10;
/// Most log lines per request; the rest is counted and dropped.
const MAX_LOG_LINES: usize = 100;

/// `text` with its control characters but tab written as escapes (`\u{1b}`).
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Turns stderr bytes into log lines: at most [`MAX_LOG_BYTES`] and [`MAX_LOG_LINES`] a
/// request, control characters escaped (a guest cannot forge a log line or drive the
/// operator's terminal).
pub(crate) struct FunctionLog {
    function: String,
    context: LogContext,
    /// The trace id, read from the context once a line needs it.
    trace_id: std::cell::OnceCell<String>,
    line: Vec<u8>,
    kept: usize,
    lines: usize,
    dropped: usize,
}

impl FunctionLog {
    /// The log of one request of `function`.
    pub(crate) fn new(function: &str, context: LogContext) -> FunctionLog {
        FunctionLog {
            function: function.to_string(),
            context,
            trace_id: std::cell::OnceCell::new(),
            line: Vec::new(),
            kept: 0,
            lines: 0,
            dropped: 0,
        }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_BYTES.saturating_sub(self.kept);
        let (keep, drop) = bytes.split_at(bytes.len().min(room));
        self.kept += keep.len();
        self.dropped += drop.len();
        for &b in keep {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
        }
    }

    fn emit(&mut self) {
        if self.lines < MAX_LOG_LINES {
            let text = String::from_utf8_lossy(&self.line);
            let line = escape_controls(&text);
            let c = &self.context;
            let trace_id = self
                .trace_id
                .get_or_init(|| trace_id(c.traceparent.as_ref()));
            tracing::info!(target: "function", function = %self.function, request_id = %c.request_id, %trace_id, "{line}");
            if let Some(tail) = &c.tail {
                let _ = tail.events.send(Arc::new(TailEvent {
                    function: self.function.clone(),
                    deployment: tail.deployment.clone(),
                    request_id: c.request_id.clone(),
                    trace_id: trace_id.clone(),
                    kind: TailKind::Log {
                        line: line.into_owned(),
                    },
                }));
            }
            self.lines += 1;
        } else {
            self.dropped += self.line.len() + 1;
        }
        self.line.clear();
    }

    pub(crate) fn flush(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        if self.dropped > 0 {
            tracing::warn!(function = %self.function, request_id = %self.context.request_id,
                dropped_bytes = self.dropped, "function log over {MAX_LOG_BYTES} bytes or {MAX_LOG_LINES} lines, rest dropped");
            self.dropped = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guests_log_is_bounded_in_lines_and_bytes_and_escaped() {
        let mut log = FunctionLog::new("f", LogContext::of_request("r"));
        log.write(&b"\n".repeat(10_000));
        assert_eq!(log.lines, MAX_LOG_LINES);
        assert_eq!(log.dropped, 10_000 - MAX_LOG_LINES);
        log.write(&vec![b'x'; 2 * MAX_LOG_BYTES]);
        assert!(log.kept <= MAX_LOG_BYTES);
        assert_eq!(escape_controls("plain\ttext"), "plain\ttext");
        assert_eq!(
            escape_controls("\u{1b}[31mred\r fake INFO line"),
            "\\u{1b}[31mred\\r fake INFO line"
        );
    }
}
