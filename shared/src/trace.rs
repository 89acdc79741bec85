//! W3C trace context (`traceparent`): a request's trace is honoured when it comes in
//! well-formed, and started afresh otherwise; it is never passed on as it came. Each hop
//! that forwards the request is a span of its own: the trace id goes on, the parent id
//! is the forwarding hop's.
//!
//! Only version `00` is read, strictly: `00-` 32 lower-case hex digits (not all zero) `-`
//! 16 (not all zero) `-` 2, nothing more. Anything else (another version, upper case,
//! extra fields, a zero id, two headers) is treated as absent, as the specification
//! allows a receiver to do, and its `tracestate` goes with it.

use std::fmt::Write as _;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header (vendors' entries beside a valid `traceparent`).
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` passed on (the specification's limit of what to propagate).
pub const MAX_TRACESTATE: usize = 512;

/// A request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace the request belongs to.
    pub trace_id: [u8; 16],
    /// The span that sent it.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` unless it is well-formed version `00`.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return None;
        };
        if *version != "00" {
            return None;
        }
        let trace_id: [u8; 16] = lower_hex(trace)?.try_into().ok()?;
        let parent_id: [u8; 8] = lower_hex(parent)?.try_into().ok()?;
        let [flags]: [u8; 1] = lower_hex(flags)?.try_into().ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, sampled, sent by span `span` (random bytes give a random trace).
    pub fn start(trace_id: [u8; 16], span: [u8; 8]) -> TraceContext {
        TraceContext {
            trace_id,
            parent_id: span,
            flags: 1,
        }
    }

    /// The same trace, sent on by span `span`.
    pub fn child(&self, span: [u8; 8]) -> TraceContext {
        TraceContext {
            parent_id: span,
            ..*self
        }
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        for b in self.trace_id {
            let _ = write!(out, "{b:02x}");
        }
        out.push('-');
        for b in self.parent_id {
            let _ = write!(out, "{b:02x}");
        }
        let _ = write!(out, "-{:02x}", self.flags);
        out
    }

    /// The trace id in hex, for logs.
    pub fn trace_id_hex(&self) -> String {
        self.header()[3..35].to_string()
    }
}

/// The bytes of `text`, which must be lower-case hex of even length.
fn lower_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty()
        || !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_parent_is_read_and_everything_else_is_not() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(good).unwrap();
        assert_eq!(parsed.header(), good);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child([7; 8]);
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_eq!(
            child.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-01"
        );
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let fresh = TraceContext::start([1; 16], [2; 8]);
        assert_eq!(TraceContext::parse(&fresh.header()), Some(fresh));
    }
}
