//! Edge node: runs WebAssembly functions under wasmer and serves them to gateways over
//! HTTP/3.
//!
//! A request's way through the crate:
//!
//! 1. [`server`] accepts QUIC connections from gateways (quinn + h3) and reads each
//!    request: a deploy (`PUT /_edge/v1/deployments/{id}`), the status, or an invocation
//!    naming a deployment in `x-edge-function`.
//! 2. [`Node`] holds the loaded deployments. A deploy checks the module and loads it
//!    through [`runtime::cache`] (memory, else the on-disk artifact, else a compile in
//!    [`runtime::engine`]).
//! 3. An invocation takes an execution slot from [`workers`] (waiting up to the queue
//!    timeout), and on a worker thread [`runtime::invoke`] creates a fresh instance with
//!    the WASI host of [`runtime::wasi`], fed by the CGI variables of [`cgi`], under the
//!    function's fuel and memory limits.
//! 4. The guest's CGI output is parsed back ([`cgi`]) and streamed to the gateway with
//!    `server-timing`; every failure becomes its status code in one place
//!    ([`Failure::status`]).

pub mod cgi;
pub mod runtime;
pub mod server;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use edge_shared::config::{LimitDefaults, NodeConfig};
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::{ModuleError, check_module};
use edge_shared::wire::{Refusal, ServerTiming};
use http::StatusCode;
use serde::Serialize;

use runtime::cache::{LoadError, ModuleCache, Source};
use runtime::invoke::{self, Invocation, RunError, Runnable};
use workers::{PoolError, WorkerPool};

/// A deployment loaded on this node.
pub struct Deployment {
    /// What the gateway announced.
    pub manifest: FunctionManifest,
    /// The limits in force: the manifest's, else the node's defaults.
    pub limits: LimitDefaults,
    runnable: Runnable,
    env: Vec<(String, String)>,
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The manifest has bad fields.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The module's hash is not the manifest's content id.
    #[error("module hash {actual} does not match the manifest's content id {expected}")]
    ContentMismatch {
        /// From the manifest.
        expected: ContentId,
        /// Of the bytes.
        actual: ContentId,
    },
    /// The module failed the deploy checks.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Compiling or caching failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Why an invocation produced no function response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
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
    /// A host bug: the worker job panicked.
    #[error("internal error running the function")]
    Internal,
}

impl Failure {
    /// The HTTP status this failure answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Deadline(_) | Failure::Run(RunError::FuelExhausted { .. }) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Run(_) | Failure::BadOutput(_) | Failure::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The body users see: the reason without internals (those go to the log).
    pub fn public_message(&self) -> String {
        match self {
            Failure::BadRequest(reason) => format!("bad request: {reason}\n"),
            Failure::Refused(r) => format!("node refused the request: {}\n", r.as_str()),
            Failure::BodyTooLarge(limit) => format!("request body over the {limit} byte limit\n"),
            Failure::Deadline(_) | Failure::Run(RunError::FuelExhausted { .. }) => {
                "function timed out\n".into()
            }
            Failure::Run(_) | Failure::BadOutput(_) | Failure::Internal => {
                "function failed\n".into()
            }
        }
    }
}

/// A request for a function, as the server read it.
pub struct Call {
    /// Request id.
    pub request_id: String,
    /// CGI variables (without the function's own).
    pub cgi_env: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Time the gateway gives the node, if it said.
    pub deadline: Option<Duration>,
}

/// A function's answer.
pub struct Answer {
    /// Its parsed CGI head.
    pub head: cgi::CgiResponse,
    /// Its whole stdout; the body starts at `head.body_start`.
    pub output: Bytes,
    /// queue, instantiate and run times.
    pub timing: ServerTiming,
}

/// The node's counters and load, as one snapshot.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Execution slots.
    pub slots: usize,
    /// Slots taken.
    pub busy: usize,
    /// Invocations completed, failed or refused since start.
    pub requests: u64,
    /// Modules compiled since start.
    pub compiles: u64,
    /// Artifacts deserialized from disk since start.
    pub deserializations: u64,
    /// Loaded deployments.
    pub deployments: Vec<String>,
    /// Whether the node is shutting down.
    pub draining: bool,
}

/// The node: its deployments, module cache and worker pool.
pub struct Node {
    config: NodeConfig,
    cache: ModuleCache,
    deployments: DashMap<DeploymentId, Arc<Deployment>>,
    pool: WorkerPool,
    requests: AtomicU64,
    draining: AtomicBool,
}

impl Node {
    /// A node for `config`, its cache folder opened (created if missing).
    pub fn new(config: NodeConfig) -> Result<Node, LoadError> {
        let threads = match config.worker_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(Node {
            cache: ModuleCache::open(&config.cache_dir)?,
            deployments: DashMap::new(),
            pool: WorkerPool::new(threads),
            requests: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            config,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Loads a deployment (checks, then compile or cache). Blocks: run it off the runtime.
    pub fn deploy(
        &self,
        manifest: FunctionManifest,
        module: &[u8],
    ) -> Result<(Source, Duration), DeployError> {
        manifest.validate().map_err(|problems| {
            DeployError::Manifest(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let actual = ContentId::of(module);
        if actual != manifest.content_id {
            return Err(DeployError::ContentMismatch {
                expected: manifest.content_id.clone(),
                actual,
            });
        }
        check_module(module)?;
        let limits = self.config.defaults.apply(&manifest.limits);
        let (runnable, source, took) = self.cache.load(
            &manifest.name,
            &manifest.content_id,
            module,
            limits.memory_limit_mib,
        )?;
        let env = manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let id = manifest.deployment_id();
        tracing::info!(deployment = %id, source = ?source, ms = took.as_secs_f64() * 1e3, "deployed");
        self.deployments.insert(
            id,
            Arc::new(Deployment {
                manifest,
                limits,
                runnable,
                env,
            }),
        );
        Ok((source, took))
    }

    /// The deployment with this id, if loaded.
    pub fn deployment(&self, id: &DeploymentId) -> Option<Arc<Deployment>> {
        self.deployments.get(id).map(|d| Arc::clone(&d))
    }

    /// Runs a call of `deployment`: waits for a slot, runs a fresh instance under the
    /// limits, parses the CGI answer.
    pub async fn invoke(&self, deployment: &Deployment, call: Call) -> Result<Answer, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.draining.load(Ordering::Relaxed) {
            return Err(Failure::Refused(Refusal::Draining));
        }
        let limits = &deployment.limits;
        let timeout = Duration::from_millis(limits.timeout_ms);
        let deadline = call.deadline.map_or(timeout, |d| d.min(timeout));
        let mut env = call.cgi_env;
        env.extend(deployment.env.iter().cloned());
        let invocation = Invocation {
            request_id: call.request_id,
            env,
            stdin: call.body,
            stdout_limit: usize::try_from(limits.max_response_body_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(16 << 10),
            fuel: limits.timeout_ms.saturating_mul(self.config.fuel_per_ms),
        };
        let runnable = deployment.runnable.clone();
        let queue_timeout = Duration::from_millis(self.config.queue_timeout_ms);
        let job = self
            .pool
            .run(queue_timeout, move || invoke::run(&runnable, invocation));
        let (result, queued) = match tokio::time::timeout(queue_timeout + deadline, job).await {
            Err(_) => return Err(Failure::Deadline(deadline)),
            Ok(Err(PoolError::Overloaded)) => return Err(Failure::Refused(Refusal::Overloaded)),
            Ok(Err(PoolError::Panicked)) => return Err(Failure::Internal),
            Ok(Ok(done)) => done,
        };
        let completed = result?;
        tracing::debug!(
            function = %deployment.manifest.name,
            fuel = completed.fuel_used,
            run_us = completed.run.as_micros() as u64,
            "invocation finished"
        );
        let head = cgi::parse_response(&completed.stdout)?;
        let body_len = completed.stdout.len() - head.body_start;
        if body_len as u64 > limits.max_response_body_bytes {
            return Err(RunError::ResponseTooLarge {
                limit: limits.max_response_body_bytes as usize,
            }
            .into());
        }
        let mut timing = ServerTiming::default();
        timing.push("queue", queued);
        timing.push("instantiate", completed.instantiate);
        timing.push("run", completed.run);
        Ok(Answer {
            head,
            output: Bytes::from(completed.stdout),
            timing,
        })
    }

    /// Marks the node as draining: new invocations are refused with `draining`.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Slots taken right now.
    pub fn busy(&self) -> usize {
        self.pool.busy()
    }

    /// The status snapshot.
    pub fn status(&self) -> NodeStatus {
        let stats = self.cache.stats();
        let mut deployments: Vec<String> = self
            .deployments
            .iter()
            .map(|d| d.key().to_string())
            .collect();
        deployments.sort();
        NodeStatus {
            name: self.config.name.clone(),
            slots: self.pool.size(),
            busy: self.pool.busy(),
            requests: self.requests.load(Ordering::Relaxed),
            compiles: stats.compiles.load(Ordering::Relaxed),
            deserializations: stats.deserializations.load(Ordering::Relaxed),
            deployments,
            draining: self.draining.load(Ordering::Relaxed),
        }
    }
}
