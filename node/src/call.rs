//! A call of a function as the node's pipeline sees it: the [`Call`] the server made of
//! an HTTP request, the function's [`Answer`], or the [`Failure`] that stopped it, with
//! the one mapping of failures to status codes and public reasons.

use std::time::Duration;

use bytes::Bytes;
use edge_shared::wire::{Refusal, ServerTiming};
use http::StatusCode;

use crate::cgi;
use crate::runtime::invoke::{Completed, RunError};
use crate::workers::Submitted;

/// A request for a function, as the server read it.
pub struct Call {
    /// The user's request as the gateway forwarded it (method, path and query, host,
    /// headers).
    pub request: http::Request<()>,
    /// The route prefix that matched at the gateway (CGI `SCRIPT_NAME`).
    pub script_name: String,
    /// Request id.
    pub request_id: String,
    /// The body.
    pub body: Bytes,
    /// Time the gateway gives the node, if it said.
    pub deadline: Option<Duration>,
    /// The gateway that sent it (its member name), if it said.
    pub gateway: Option<String>,
}

/// A function's answer.
pub struct Answer {
    /// Its parsed CGI head.
    pub head: cgi::CgiResponse,
    /// Its whole stdout, or with `rest` its first chunk; the body starts at
    /// `head.body_start`.
    pub output: Bytes,
    /// The rest of an answer the function is still writing (longer than one chunk of
    /// [`crate::runtime::stdout::STREAM_CHUNK`]); then `run`, `fuel_used` and
    /// `memory_bytes` are zero here and come from [`Streaming::end`].
    pub rest: Option<Streaming>,
    /// queue, cold-start, instantiate and run times.
    pub timing: ServerTiming,
    /// Time in the guest.
    pub run: Duration,
    /// Fuel it used.
    pub fuel_used: u64,
    /// Its linear memory at the end, in bytes.
    pub memory_bytes: u64,
}

/// The rest of an answer while the function writes it: chunks as they come, then how
/// the run ended.
pub struct Streaming {
    pub(crate) chunks: tokio::sync::mpsc::Receiver<Bytes>,
    pub(crate) done: Submitted<JobResult>,
    /// Body bytes it may still send under `max_response_body_bytes`.
    pub(crate) body_left: u64,
    /// The function wrote past the limit: no more chunks are passed on.
    pub(crate) over_limit: bool,
    /// `max_response_body_bytes`.
    pub(crate) limit: u64,
}

/// What a run job on a worker delivers: the run and the time it took to instantiate.
pub(crate) type JobResult = Result<(Completed, Duration), RunError>;

/// How a streamed answer's run ended.
#[derive(Debug)]
pub struct Ended {
    /// Its last bytes, after the chunks.
    pub tail: Bytes,
    /// Time in the guest.
    pub run: Duration,
    /// Fuel it used.
    pub fuel_used: u64,
    /// Its linear memory at the end, in bytes.
    pub memory_bytes: u64,
}

impl Streaming {
    /// The next chunk, as the function wrote it; `None` once it ended (or wrote past
    /// its response limit, which [`Streaming::end`] then reports).
    pub async fn next(&mut self) -> Option<Bytes> {
        if self.over_limit {
            return None;
        }
        let chunk = self.chunks.recv().await?;
        match self.body_left.checked_sub(chunk.len() as u64) {
            Some(left) => {
                self.body_left = left;
                Some(chunk)
            }
            None => {
                self.over_limit = true;
                None
            }
        }
    }

    /// How the run ended. Called before the chunks ran out, it stops reading them: the
    /// function's next write fails, and it ends as abandoned.
    pub async fn end(self) -> Result<Ended, Failure> {
        let Streaming {
            chunks,
            done,
            body_left,
            over_limit,
            limit,
        } = self;
        drop(chunks);
        let too_large = Failure::Run(RunError::ResponseTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
        if over_limit {
            return Err(too_large);
        }
        let (completed, _) = done.await.map_err(|_| Failure::Internal)??;
        if completed.stdout.len() as u64 > body_left {
            return Err(too_large);
        }
        Ok(Ended {
            tail: Bytes::from(completed.stdout),
            run: completed.run,
            fuel_used: completed.fuel_used,
            memory_bytes: completed.memory_bytes,
        })
    }
}

impl Answer {
    /// The response body.
    pub fn body(&self) -> Bytes {
        self.output.slice(self.head.body_start..)
    }
}

/// Why an invocation produced no function response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Neither an invocation (no `x-edge-function`) nor a control path.
    #[error("not an invocation, and no such control path")]
    NoSuchControl,
    /// Another node asked for an artifact this node does not hold.
    #[error("no such artifact here")]
    NoArtifact,
    /// Another node asked for anything but an artifact.
    #[error("a node may fetch artifacts here, nothing else")]
    NodesFetchOnly,
    /// A control path asked with the wrong method.
    #[error("{0} only")]
    MethodNotAllowed(&'static str),
    /// A deploy the node refused (a gateway's call: the reason is for its log).
    #[error("deploy refused: {0}")]
    DeployRefused(String),
    /// Refused before the function started: safe to retry on another node.
    #[error("refused: {}", .0.as_str())]
    Refused(Refusal),
    /// The body is over the function's limit.
    #[error("request body over the {0} byte limit")]
    BodyTooLarge(u64),
    /// The function ran past its wall-clock deadline.
    #[error("function ran past its {0:?} deadline")]
    Deadline(Duration),
    /// The function failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The function's output is not a CGI response.
    #[error("function wrote a malformed CGI response: {0}")]
    BadOutput(#[from] cgi::CgiError),
    /// Its module could not be loaded on this node.
    #[error("loading the function failed: {0}")]
    Load(String),
    /// A host bug: the worker job panicked.
    #[error("internal error running the function")]
    Internal,
}

impl Failure {
    /// The HTTP status this failure answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::NoSuchControl | Failure::NoArtifact => StatusCode::NOT_FOUND,
            Failure::NodesFetchOnly => StatusCode::FORBIDDEN,
            Failure::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Failure::DeployRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // A deploy by content id to a node without the module: a conflict the
            // gateway settles by sending the module.
            Failure::Refused(Refusal::ModuleMissing) => StatusCode::CONFLICT,
            Failure::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Deadline(_)
            | Failure::Run(
                RunError::FuelExhausted { .. }
                | RunError::SleptPastDeadline
                | RunError::Interrupted,
            ) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Run(_) | Failure::BadOutput(_) | Failure::Load(_) | Failure::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The body the caller sees: the reason without internals (those go to the log). A
    /// deploy's refusal, which only a cluster member can ask for, says why.
    pub fn public_message(&self) -> String {
        match self {
            Failure::BadRequest(_)
            | Failure::NoSuchControl
            | Failure::NoArtifact
            | Failure::NodesFetchOnly
            | Failure::MethodNotAllowed(_)
            | Failure::DeployRefused(_) => {
                format!("{self}\n")
            }
            Failure::Refused(r) => format!("node refused the request: {}\n", r.as_str()),
            Failure::BodyTooLarge(limit) => format!("request body over the {limit} byte limit\n"),
            Failure::Deadline(_)
            | Failure::Run(
                RunError::FuelExhausted { .. }
                | RunError::SleptPastDeadline
                | RunError::Interrupted,
            ) => "function timed out\n".into(),
            Failure::Run(_) | Failure::BadOutput(_) | Failure::Load(_) | Failure::Internal => {
                "function failed\n".into()
            }
        }
    }
}
