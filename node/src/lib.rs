//! Edge node: runs WebAssembly functions under wasmer and serves them to gateways over
//! HTTP/3.
//!
//! A request's way through the crate:
//!
//! 1. [`server`] accepts QUIC connections from gateways (quinn + h3) and reads each
//!    request: a deploy (`PUT /_edge/v1/deployments/{id}`), the status, or an invocation
//!    naming a deployment in `x-edge-function`.
//! 2. [`Node`] holds the loaded deployments. A deploy checks the module, keeps it in the
//!    blob store and loads it through [`runtime::cache`] (memory, else the on-disk
//!    artifact, else a compile in [`runtime::engine`]); a deployment whose module left
//!    memory is cold, and its next request loads it again (timed, per phase).
//! 3. An invocation is admitted by [`admission`] (node slots, the function's
//!    concurrency, the memory budget; else a bounded FIFO wait, else `503`), then runs on
//!    a thread of [`workers`]: it takes a ready instance from that worker's [`pool`] (or
//!    makes one with [`runtime::invoke`]), with the WASI host of [`runtime::wasi`] fed by
//!    the CGI variables of [`cgi`], under the function's fuel and memory limits.
//! 4. The guest's CGI output is parsed back ([`cgi`]) and streamed to the gateway with
//!    `server-timing`; every failure becomes its status code in one place
//!    ([`Failure::status`]).

pub mod admission;
pub mod cgi;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod workers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use edge_shared::config::{LimitDefaults, NodeConfig};
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::{ModuleError, check_module};
use edge_shared::wire::{Refusal, ServerTiming};
use http::StatusCode;
use serde::Serialize;

use admission::{Admitter, FunctionLimits};
use pool::{InstancePool, PoolSizer};
use runtime::cache::{LoadError, Loaded, ModuleCache, ModuleKey, Source};
use runtime::invoke::{self, Invocation, RunError};
use workers::WorkerPool;

/// A deployment loaded on this node.
pub struct Deployment {
    /// Its id.
    pub id: DeploymentId,
    /// What the gateway announced.
    pub manifest: FunctionManifest,
    /// The limits in force: the manifest's, else the node's defaults.
    pub limits: LimitDefaults,
    admission: FunctionLimits,
    env: Vec<(String, String)>,
    /// Its pool of ready instances while its module is in memory (warm); `None` cold.
    warm: Mutex<Option<Arc<InstancePool>>>,
    /// Held while the module loads, so concurrent cold requests load it once.
    loading: tokio::sync::Mutex<()>,
    cold: ColdStats,
}

impl Deployment {
    fn module_key(&self) -> ModuleKey {
        (
            self.manifest.content_id.clone(),
            self.limits.memory_limit_mib,
        )
    }

    fn warm(&self) -> MutexGuard<'_, Option<Arc<InstancePool>>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cold starts of one deployment on the request path, and the time of each phase.
#[derive(Debug, Default)]
struct ColdStats {
    count: AtomicU64,
    blob_us: AtomicU64,
    load_us: AtomicU64,
    instantiate_us: AtomicU64,
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
    /// The module compiled but cannot be instantiated (say, its memory's minimum is
    /// over the function's memory limit).
    #[error("module cannot be instantiated: {0}")]
    Instantiate(RunError),
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
            Failure::Deadline(_)
            | Failure::Run(RunError::FuelExhausted { .. } | RunError::SleptPastDeadline) => {
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
            Failure::Deadline(_)
            | Failure::Run(RunError::FuelExhausted { .. } | RunError::SleptPastDeadline) => {
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
    /// The gateway that sent it (its member name), if it said.
    pub gateway: Option<String>,
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

/// The node's load, as gossip publishes it and gateways route on.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Execution slots.
    pub slots: usize,
    /// Requests running.
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Moving average of the guest run time, in microseconds.
    pub ewma_run_us: u64,
    /// Memory reserved by running and pooled instances, in bytes.
    pub memory_reserved: u64,
    /// The instance memory budget, in bytes.
    pub memory_budget: u64,
    /// Deployments whose compiled module is in memory here.
    pub warm: Vec<DeploymentId>,
    /// Whether the node is shutting down.
    pub draining: bool,
    /// Requests running or queued, per gateway that sent them (those with none left out).
    pub from_gateways: Vec<(String, usize)>,
}

/// One deployment in the status.
#[derive(Debug, Serialize)]
pub struct DeploymentStatus {
    /// Its id.
    pub id: DeploymentId,
    /// Whether its module is in memory.
    pub warm: bool,
    /// Requests running.
    pub running: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Ready instances in its pool.
    pub pool_ready: usize,
    /// Requests that took a ready instance.
    pub pool_hits: u64,
    /// Requests that instantiated on their own path.
    pub pool_misses: u64,
    /// Requests that found it cold and loaded its module.
    pub cold_starts: u64,
    /// Total time of those cold starts reading the blob, in microseconds.
    pub cold_blob_us: u64,
    /// Total time of those cold starts compiling or deserializing, in microseconds.
    pub cold_load_us: u64,
    /// Total time of those cold starts instantiating, in microseconds.
    pub cold_instantiate_us: u64,
}

/// The node's counters and load, as one snapshot.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// The load snapshot.
    pub load: Load,
    /// Invocations completed, failed or refused since start.
    pub requests: u64,
    /// Invocations refused as overloaded since start.
    pub overloaded: u64,
    /// The most instance memory ever reserved at once, in bytes (never over the budget).
    pub peak_memory_reserved: u64,
    /// Modules compiled since start.
    pub compiles: u64,
    /// Artifacts deserialized from disk since start.
    pub deserializations: u64,
    /// Modules evicted from memory since start.
    pub evictions: u64,
    /// Compiled modules in memory.
    pub modules_in_memory: usize,
    /// Their artifact bytes.
    pub module_bytes: u64,
    /// Loaded deployments.
    pub deployments: Vec<DeploymentStatus>,
    /// Gossip traffic and membership, once the node has joined.
    pub gossip: Option<edge_shared::gossip::GossipStats>,
}

/// The node: its deployments, module cache, admission and worker threads.
pub struct Node {
    config: NodeConfig,
    /// Requests running or queued per sending gateway.
    from_gateways: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    gossip: std::sync::OnceLock<Arc<edge_shared::gossip::Gossip>>,
    cache: Arc<ModuleCache>,
    deployments: DashMap<DeploymentId, Arc<Deployment>>,
    workers: WorkerPool,
    admitter: Arc<Admitter<DeploymentId>>,
    ewma_run_ns: AtomicU64,
    /// Held while a deployment is loaded, so that two deploys of one id (the gateway's
    /// start-up push racing its deploy-on-not-found) load it once.
    deploying: Mutex<()>,
    requests: AtomicU64,
    overloaded: AtomicU64,
    draining: AtomicBool,
}

impl Node {
    /// A node for `config`, its cache folder opened (created if missing).
    pub fn new(config: NodeConfig) -> Result<Node, LoadError> {
        let threads = match config.worker_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let admitter = Admitter::new(threads, config.memory_budget_mib << 20);
        Ok(Node {
            from_gateways: std::sync::Mutex::default(),
            gossip: std::sync::OnceLock::new(),
            cache: Arc::new(ModuleCache::open(
                &config.cache_dir,
                config.module_cache_mib << 20,
            )?),
            deployments: DashMap::new(),
            workers: WorkerPool::new(threads, &admitter),
            admitter,
            ewma_run_ns: AtomicU64::new(0),
            deploying: Mutex::new(()),
            requests: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            config,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Loads a deployment: checks it, keeps its module in the blob store, and warms it
    /// (compile or cache). Blocks: run it off the runtime.
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
        if limits.memory_limit_mib > self.config.memory_budget_mib {
            return Err(DeployError::Manifest(format!(
                "memory_limit_mib {} is over this node's memory budget of {} MiB",
                limits.memory_limit_mib, self.config.memory_budget_mib
            )));
        }
        let _deploying = self.deploying.lock().unwrap_or_else(|p| p.into_inner());
        self.cache.store_blob(&manifest.content_id, module)?;
        let id = manifest.deployment_id();
        if let Some(existing) = self.deployment(&id) {
            let loaded = self.cache.load(
                &manifest.name,
                &manifest.content_id,
                limits.memory_limit_mib,
            )?;
            let (source, took) = (loaded.source, loaded.blob + loaded.load);
            if self.warm_pool(&existing).is_none() {
                self.warm_up(&existing, loaded);
            }
            return Ok((source, took));
        }
        let deployment = Arc::new(Deployment {
            id: id.clone(),
            admission: FunctionLimits {
                max_concurrency: match limits.max_concurrency {
                    0 => self.workers.size(),
                    n => n as usize,
                },
                queue_depth: limits.queue_depth as usize,
                queue_timeout: Duration::from_millis(limits.queue_timeout_ms),
                memory: limits.memory_limit_mib << 20,
            },
            env: manifest
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            manifest,
            limits,
            warm: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            cold: ColdStats::default(),
        });
        let loaded = self.cache.load(
            &deployment.manifest.name,
            &deployment.manifest.content_id,
            deployment.limits.memory_limit_mib,
        )?;
        let (source, took) = (loaded.source, loaded.blob + loaded.load);
        // Instantiated once here, so a module that cannot be is refused before any
        // request runs it.
        invoke::prepare(&loaded.runnable).map_err(DeployError::Instantiate)?;
        tracing::info!(deployment = %id, source = ?source, ms = took.as_secs_f64() * 1e3, "deployed");
        self.deployments.insert(id, Arc::clone(&deployment));
        self.warm_up(&deployment, loaded);
        Ok((source, took))
    }

    /// The deployment with this id, if loaded.
    pub fn deployment(&self, id: &DeploymentId) -> Option<Arc<Deployment>> {
        self.deployments.get(id).map(|d| Arc::clone(&d))
    }

    /// Runs a call of `deployment`: warms it if cold, waits for admission, runs a fresh
    /// instance under the limits, parses the CGI answer.
    pub async fn invoke(
        &self,
        deployment: &Arc<Deployment>,
        call: Call,
    ) -> Result<Answer, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.draining.load(Ordering::Relaxed) {
            return Err(Failure::Refused(Refusal::Draining));
        }
        let _from = call
            .gateway
            .as_deref()
            .map(|gateway| FromGateway::start(&self.from_gateways, gateway));
        let mut timing = ServerTiming::default();
        let (pool, cold) = self.pool_of(deployment, &mut timing).await?;
        let (permit, queued) = match self
            .admitter
            .admit(&deployment.id, deployment.admission)
            .await
        {
            Ok(admitted) => admitted,
            Err(_) => {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::Refused(Refusal::Overloaded));
            }
        };
        timing.push("queue", queued);
        pool.record(self.admitter.function_usage(&deployment.id).0);

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
            deadline: Instant::now() + deadline,
        };
        let job_pool = Arc::clone(&pool);
        let job = self.workers.run(move |ready| {
            let started = Instant::now();
            // A cold request instantiates on its own path, so its cold start is timed
            // whole; a warm one takes a ready instance when its worker holds one.
            let ready = if cold { None } else { ready.take(&job_pool) };
            let (mut prepared, instantiate) = match ready {
                Some(prepared) => (prepared, Duration::ZERO),
                None => match invoke::prepare(job_pool.runnable()) {
                    Ok(prepared) => (prepared, started.elapsed()),
                    Err(e) => return (Err(e), None),
                },
            };
            let result = invoke::run(job_pool.runnable(), &mut prepared, invocation)
                .map(|completed| (completed, instantiate));
            // The capacity goes back before the answer does: a client that sends its
            // next request as soon as it has this answer finds it free. The spent
            // instance is dropped after the answer, off the request path.
            drop(permit);
            (result, Some(prepared))
        });
        let (completed, instantiate) = match tokio::time::timeout(deadline, job).await {
            Err(_) => return Err(Failure::Deadline(deadline)),
            Ok(Err(_)) => return Err(Failure::Internal),
            Ok(Ok(result)) => result?,
        };
        self.note_run(completed.run);
        if cold {
            let us = micros(instantiate);
            deployment
                .cold
                .instantiate_us
                .fetch_add(us, Ordering::Relaxed);
        }
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
        timing.push("instantiate", instantiate);
        timing.push("run", completed.run);
        Ok(Answer {
            head,
            output: Bytes::from(completed.stdout),
            timing,
        })
    }

    /// The deployment's instance pool, and whether this request found it cold and
    /// loaded its module (once, however many requests wait for it). Adds the cold-start
    /// phases to `timing`.
    async fn pool_of(
        &self,
        deployment: &Arc<Deployment>,
        timing: &mut ServerTiming,
    ) -> Result<(Arc<InstancePool>, bool), Failure> {
        if let Some(pool) = self.warm_pool(deployment) {
            timing.push("cold", Duration::ZERO);
            return Ok((pool, false));
        }
        let _loading = deployment.loading.lock().await;
        if let Some(pool) = self.warm_pool(deployment) {
            timing.push("cold", Duration::ZERO);
            return Ok((pool, false));
        }
        let started = Instant::now();
        let cache = Arc::clone(&self.cache);
        let (name, id, limit) = (
            deployment.manifest.name.clone(),
            deployment.manifest.content_id.clone(),
            deployment.limits.memory_limit_mib,
        );
        let loaded = tokio::task::spawn_blocking(move || cache.load(&name, &id, limit))
            .await
            .map_err(|_| Failure::Internal)?;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(LoadError::Missing(content_id)) => {
                tracing::warn!(deployment = %deployment.id, %content_id, "module gone from the blob store; asking for a redeploy");
                self.deployments.remove(&deployment.id);
                return Err(Failure::Refused(Refusal::NotFound));
            }
            Err(e) => {
                tracing::error!(deployment = %deployment.id, error = %e, "cold start failed");
                return Err(Failure::Internal);
            }
        };
        let (source, blob, load) = (loaded.source, loaded.blob, loaded.load);
        let pool = self.warm_up(deployment, loaded);
        let cold = &deployment.cold;
        cold.count.fetch_add(1, Ordering::Relaxed);
        cold.blob_us.fetch_add(micros(blob), Ordering::Relaxed);
        cold.load_us.fetch_add(micros(load), Ordering::Relaxed);
        timing.push("cold", started.elapsed());
        timing.push("blob", blob);
        timing.push(
            match source {
                Source::Compiled => "compile",
                Source::Disk | Source::Memory => "deserialize",
            },
            load,
        );
        tracing::info!(deployment = %deployment.id, source = ?source, ms = started.elapsed().as_secs_f64() * 1e3, "cold start");
        Ok((pool, true))
    }

    fn warm_pool(&self, deployment: &Deployment) -> Option<Arc<InstancePool>> {
        let pool = deployment.warm().clone()?;
        // Touching the module cache keeps the module recently used.
        self.cache.is_warm(&deployment.module_key()).then_some(pool)
    }

    /// Makes `deployment` warm with the module just loaded, and turns cold the
    /// deployments whose modules that load pushed out of memory.
    fn warm_up(&self, deployment: &Deployment, loaded: Loaded) -> Arc<InstancePool> {
        let pool = Arc::new(InstancePool::new(
            deployment.id.clone(),
            loaded.runnable,
            PoolSizer::new(
                self.config
                    .instance_pool
                    .max_per_function
                    .min(deployment.admission.max_concurrency),
                Duration::from_millis(self.config.instance_pool.idle_ttl_ms),
                Instant::now(),
            ),
            self.workers.size(),
        ));
        *deployment.warm() = Some(Arc::clone(&pool));
        self.workers.announce(&pool);
        for key in loaded.evicted {
            for other in self.deployments.iter() {
                if other.module_key() == key {
                    other.warm().take();
                }
            }
        }
        pool
    }

    fn note_run(&self, run: Duration) {
        // Exponentially weighted, 1/8 per sample.
        let sample = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .ewma_run_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
    }

    /// Seconds a refused client should wait: the time the queue ahead would take to
    /// drain at the recent run time, at least one second.
    pub fn retry_after_secs(&self) -> u64 {
        let usage = self.admitter.usage();
        let ewma = Duration::from_nanos(self.ewma_run_ns.load(Ordering::Relaxed));
        let drain = ewma * u32::try_from(usage.queued + usage.running).unwrap_or(u32::MAX)
            / u32::try_from(self.workers.size()).unwrap_or(1);
        drain.as_secs().clamp(1, 60)
    }

    /// Marks the node as draining: new invocations are refused with `draining`.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Requests running right now.
    pub fn busy(&self) -> usize {
        self.admitter.usage().running
    }

    /// The load snapshot: what gossip publishes.
    pub fn load(&self) -> Load {
        let usage = self.admitter.usage();
        let mut warm: Vec<DeploymentId> = self
            .deployments
            .iter()
            .filter(|d| d.warm().is_some())
            .map(|d| d.key().clone())
            .collect();
        warm.sort();
        Load {
            slots: self.workers.size(),
            in_flight: usage.running,
            queued: usage.queued,
            ewma_run_us: self.ewma_run_ns.load(Ordering::Relaxed) / 1_000,
            memory_reserved: usage.memory_reserved,
            memory_budget: self.config.memory_budget_mib << 20,
            warm,
            draining: self.draining.load(Ordering::Relaxed),
            from_gateways: {
                let from = self.from_gateways.lock().unwrap_or_else(|p| p.into_inner());
                from.iter().map(|(g, &n)| (g.clone(), n)).collect()
            },
        }
    }

    /// The status snapshot.
    pub fn status(&self) -> NodeStatus {
        let stats = self.cache.stats();
        let (modules_in_memory, module_bytes) = self.cache.memory_usage();
        let mut deployments: Vec<DeploymentStatus> = self
            .deployments
            .iter()
            .map(|d| {
                let pool = d.warm().clone();
                let (running, queued) = self.admitter.function_usage(&d.id);
                let pooled = |f: fn(&InstancePool) -> u64| pool.as_deref().map_or(0, f);
                DeploymentStatus {
                    id: d.id.clone(),
                    warm: pool.is_some(),
                    running,
                    queued,
                    pool_ready: pool.as_deref().map_or(0, InstancePool::ready),
                    pool_hits: pooled(|p| p.stats.hits.load(Ordering::Relaxed)),
                    pool_misses: pooled(|p| p.stats.misses.load(Ordering::Relaxed)),
                    cold_starts: d.cold.count.load(Ordering::Relaxed),
                    cold_blob_us: d.cold.blob_us.load(Ordering::Relaxed),
                    cold_load_us: d.cold.load_us.load(Ordering::Relaxed),
                    cold_instantiate_us: d.cold.instantiate_us.load(Ordering::Relaxed),
                }
            })
            .collect();
        deployments.sort_by(|a, b| a.id.cmp(&b.id));
        NodeStatus {
            name: self.config.name.clone(),
            load: self.load(),
            requests: self.requests.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            peak_memory_reserved: self.admitter.usage().peak_memory_reserved,
            compiles: stats.compiles.load(Ordering::Relaxed),
            deserializations: stats.deserializations.load(Ordering::Relaxed),
            evictions: stats.evictions.load(Ordering::Relaxed),
            modules_in_memory,
            module_bytes,
            deployments,
            gossip: self.gossip.get().map(|g| g.stats()),
        }
    }

    /// Shows `gossip`'s counters and membership in the status from now on.
    pub fn attach_gossip(&self, gossip: Arc<edge_shared::gossip::Gossip>) {
        let _ = self.gossip.set(gossip);
    }
}

/// Counts one request from a gateway while alive.
struct FromGateway<'a> {
    counts: &'a std::sync::Mutex<std::collections::HashMap<String, usize>>,
    gateway: &'a str,
}

impl<'a> FromGateway<'a> {
    fn start(
        counts: &'a std::sync::Mutex<std::collections::HashMap<String, usize>>,
        gateway: &'a str,
    ) -> FromGateway<'a> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(gateway) {
            Some(n) => *n += 1,
            None => {
                map.insert(gateway.to_string(), 1);
            }
        }
        FromGateway { counts, gateway }
    }
}

impl Drop for FromGateway<'_> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(self.gateway) {
            *n -= 1;
            if *n == 0 {
                map.remove(self.gateway);
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
