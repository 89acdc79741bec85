//! `edge tail` on the node: the events of calls as they happen (each function log line,
//! and one line per call with its status and time) for gateways to stream to the admin
//! API. Nothing is kept: with no one watching, nothing is even sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events a slow watcher may fall behind by before it misses some (and is told how many).
const BACKLOG: usize = 1024;

/// One event of a call.
#[derive(Debug, Clone, Serialize)]
pub struct TailEvent {
    /// The function's name.
    pub function: String,
    /// Its deployment id (the version's).
    pub deployment: String,
    /// The request id the gateway gave.
    pub request_id: String,
    /// The W3C trace id, `-` when the gateway sent none.
    pub trace_id: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: TailKind,
}

/// What a [`TailEvent`] says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TailKind {
    /// A line the function wrote to stderr (control characters escaped).
    Log {
        /// The line.
        line: String,
    },
    /// A call answered.
    Call {
        /// The status answered.
        status: u16,
        /// Time on the node, in milliseconds.
        ms: f64,
    },
}

/// The node's watchers of calls.
pub struct Tails {
    events: broadcast::Sender<Arc<TailEvent>>,
    watchers: AtomicUsize,
}

impl Default for Tails {
    fn default() -> Tails {
        Tails {
            events: broadcast::channel(BACKLOG).0,
            watchers: AtomicUsize::new(0),
        }
    }
}

/// A watcher of the events of one function, until dropped.
pub struct Watcher<'a> {
    tails: &'a Tails,
    function: String,
    events: broadcast::Receiver<Arc<TailEvent>>,
}

impl Tails {
    /// Where to send a call's events, when anyone watches (else `None`, and a call
    /// makes none).
    pub fn sender(&self) -> Option<broadcast::Sender<Arc<TailEvent>>> {
        (self.watchers.load(Ordering::Relaxed) > 0).then(|| self.events.clone())
    }

    /// Sends `event` to the watchers, if any.
    pub fn send(&self, event: impl FnOnce() -> TailEvent) {
        if self.watchers.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(Arc::new(event()));
        }
    }

    /// Watches the events of `function` from now on.
    pub fn watch(&self, function: &str) -> Watcher<'_> {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watcher {
            tails: self,
            function: function.to_string(),
            events: self.events.subscribe(),
        }
    }
}

impl Drop for Watcher<'_> {
    fn drop(&mut self) {
        self.tails.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a watcher receives next.
pub enum Next {
    /// An event of its function.
    Event(Arc<TailEvent>),
    /// It fell behind: this many events (of any function) were missed.
    Missed(u64),
}

impl Watcher<'_> {
    /// The next event of the watched function.
    pub async fn next(&mut self) -> Next {
        loop {
            match self.events.recv().await {
                Ok(event) if event.function == self.function => return Next::Event(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => return Next::Missed(missed),
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(function: &str) -> TailEvent {
        TailEvent {
            function: function.into(),
            deployment: format!("{function}@0000000000000000"),
            request_id: "r".into(),
            trace_id: "-".into(),
            kind: TailKind::Call {
                status: 200,
                ms: 1.0,
            },
        }
    }

    #[tokio::test]
    async fn a_watcher_gets_its_function_only_and_is_told_what_it_missed() {
        let tails = Tails::default();
        assert!(tails.sender().is_none(), "no one watches yet");
        tails.send(|| panic!("no event is made with no watcher"));
        let mut watcher = tails.watch("hello");
        tails.send(|| event("other"));
        tails.send(|| event("hello"));
        let Next::Event(got) = watcher.next().await else {
            panic!("an event")
        };
        assert_eq!(got.function, "hello");
        for _ in 0..BACKLOG + 10 {
            tails.send(|| event("hello"));
        }
        let Next::Missed(missed) = watcher.next().await else {
            panic!("told of the missed")
        };
        assert_eq!(missed, 10);
        drop(watcher);
        assert!(tails.sender().is_none());
    }
}
