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

/// The ids of a request with `headers`: a new request id, and its `traceparent`
/// honoured if it is one well-formed header, else a new trace; either way sent on by a
/// new span. One draw from the OS random source makes all three.
pub(crate) fn trace_of(headers: &HeaderMap) -> Trace {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the OS random source");
    let request_id = hex::encode(&random[..8]);
    let span: [u8; 8] = random[8..16].try_into().expect("8 bytes");
    let fresh_trace: [u8; 16] = random[16..].try_into().expect("16 bytes");
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
        None => Trace {
            request_id,
            context: TraceContext::start(fresh_trace, span),
            state: None,
        },
    }
}
