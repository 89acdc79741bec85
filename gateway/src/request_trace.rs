//! A request's ids as the gateway forwards it: the request id it gives, and the W3C
//! trace context ([`edge_shared::trace`]) honoured or started.

use edge_shared::trace::{self, TraceContext};
use http::{HeaderMap, HeaderValue};

/// A request's ids as this gateway forwards it.
pub(crate) struct Trace {
    /// The request id this gateway gave it.
    pub(crate) request_id: String,
    /// The user's trace, sent on by a span of this gateway's, or a new one.
    pub(crate) context: TraceContext,
    /// The user's `tracestate`, kept only beside a valid `traceparent` and when short.
    pub(crate) state: Option<HeaderValue>,
}

/// The trace of a request with `headers`: its `traceparent` honoured if it is one
/// well-formed header, else a new trace; either way sent on by a new span.
pub(crate) fn trace_of(headers: &HeaderMap, request_id: String) -> Trace {
    let mut span = [0u8; 8];
    getrandom::fill(&mut span).expect("the OS random source");
    let mut parents = headers.get_all(trace::TRACEPARENT).iter();
    let honoured = match (parents.next(), parents.next()) {
        (Some(only), None) => only.to_str().ok().and_then(TraceContext::parse),
        _ => None,
    };
    match honoured {
        Some(parent) => {
            let mut states = headers.get_all(trace::TRACESTATE).iter();
            let state = match (states.next(), states.next()) {
                (Some(only), None) if only.len() <= trace::MAX_TRACESTATE => Some(only.clone()),
                _ => None,
            };
            Trace {
                request_id,
                context: parent.child(span),
                state,
            }
        }
        None => {
            let mut trace_id = [0u8; 16];
            getrandom::fill(&mut trace_id).expect("the OS random source");
            Trace {
                request_id,
                context: TraceContext::start(trace_id, span),
                state: None,
            }
        }
    }
}
