//! `counter`: counts its calls in a global and answers the count. On a platform that
//! gives every request a fresh instance the answer is always 1; anything else means
//! state leaked from one request into the next.
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

fn main() {
    edge_guest::serve(|_| {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        edge_guest::Response::text(200, format!("{calls}\n"))
    });
}
