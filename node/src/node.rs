//! The node: its deployments, module cache, admission and worker threads, and the
//! pipeline of one call: admit → warm (a cold load runs on a worker, under the same
//! admission as a run) → run on a worker with a ready instance → parse the CGI answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use edge_net::gossip::Gossip;
use edge_shared::admission::retry_after_secs;
use edge_shared::config::NodeConfig;
use edge_shared::limits::EffectiveLimits;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::wire::{Refusal, ServerTiming};

use crate::admission::Admitter;
use crate::call::{Answer, Call, Failure, JobResult, Streaming};
use crate::cgi::{self, CgiRequest};
use crate::deployment::{self, DeployError, Deployment, micros};
use crate::metrics::NodeMetrics;
use crate::peers::{FetchOutcome, Peers};
use crate::pool::{InstancePool, PoolSizer};
use crate::runtime::cache::{LoadError, Loaded, ModuleCache, Source};
use crate::runtime::guest_log::{LogContext, Tail};
use crate::runtime::invoke::{self, Invocation, RunError};
use crate::runtime::memories::MemoryPool;
use crate::runtime::stdout::StdoutStream;
use crate::tail::Tails;
use crate::usage::Usage;
use crate::workers::{Submitted, WorkerPool};
use edge_net::gossip::identity::unix_ms;
use edge_shared::trace::TRACEPARENT;

/// The node: its deployments, module cache, admission and worker threads.
pub struct Node {
    pub(crate) config: NodeConfig,
    /// Its Prometheus metrics.
    pub(crate) metrics: NodeMetrics,
    /// Requests running or queued per sending gateway.
    pub(crate) from_gateways: Mutex<HashMap<String, usize>>,
    pub(crate) gossip: OnceLock<Arc<Gossip>>,
    pub(crate) cache: Arc<ModuleCache>,
    pub(crate) deployments: DashMap<DeploymentId, Arc<Deployment>>,
    pub(crate) workers: WorkerPool,
    pub(crate) admitter: Arc<Admitter<DeploymentId>>,
    pub(crate) ewma_run_ns: AtomicU64,
    /// Cold loads running now, and the most ever at once.
    pub(crate) loads: (AtomicUsize, AtomicUsize),
    /// Held while a deployment is loaded, so that two deploys of one id (the gateway's
    /// start-up push racing its deploy-on-not-found) load it once.
    deploying: Mutex<()>,
    pub(crate) requests: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    /// Calls refused because the node is draining.
    pub(crate) refused_draining: AtomicU64,
    pub(crate) draining: AtomicBool,
    /// `edge tail` watchers.
    pub(crate) tails: Tails,
    /// Usage metering.
    pub(crate) usage: Usage,
    /// Deployments loading now: gossiped as `warming`, so that gateways keep their
    /// requests elsewhere until the deployment shows warm.
    pub(crate) warming: DashMap<DeploymentId, ()>,
    /// Other nodes, to take compiled artifacts from (once the node has joined gossip
    /// with `artifacts.share` on).
    pub(crate) peers: OnceLock<Peers>,
    /// Held while a module's artifact is asked of peers, so that concurrent loads of it
    /// (a deploy and a request, say) ask once: the value says the peers were asked and
    /// none had one, and the loads that waited take that answer rather than ask again.
    pub(crate) fetching: DashMap<ContentId, Arc<tokio::sync::Mutex<FetchOutcome>>>,
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
            metrics: NodeMetrics::default(),
            from_gateways: Mutex::default(),
            gossip: OnceLock::new(),
            cache: Arc::new(ModuleCache::open(
                &config.cache_dir,
                config.module_cache_mib << 20,
                config.max_table_elements,
                MemoryPool::new(
                    config.instance_pool.spare_memories,
                    usize::try_from(config.instance_pool.keep_resident_kib << 10)
                        .unwrap_or(usize::MAX),
                ),
            )?),
            deployments: DashMap::new(),
            workers: WorkerPool::new(threads, &admitter),
            admitter,
            ewma_run_ns: AtomicU64::new(0),
            loads: (AtomicUsize::new(0), AtomicUsize::new(0)),
            deploying: Mutex::new(()),
            requests: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            refused_draining: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            tails: Tails::default(),
            usage: Usage::open(&config.state_dir.join("usage.json"), unix_ms()),
            warming: DashMap::new(),
            peers: OnceLock::new(),
            fetching: DashMap::new(),
            config,
        })
    }

    /// The registry of the node's metrics, to serve (gossip and QUIC are added by
    /// whoever runs those).
    pub fn metrics(self: &Arc<Self>) -> prometheus_client::registry::Registry {
        crate::metrics::registry(self)
    }

    /// Writes the usage meter to `state_dir` if it changed; a failure is logged (the
    /// counts stay in memory for the next try).
    pub fn flush_usage(&self) {
        if let Err(e) = self.usage.flush(unix_ms()) {
            tracing::error!(file = %self.usage.file().display(), error = %e, "writing the usage meter failed");
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Loads a deployment: checks it, keeps its module in the blob store, and warms it
    /// (compile or cache). Without `module`, the manifest names it by content id alone:
    /// it is read from this node's blob store, its hash checked, or the deploy is
    /// refused with [`DeployError::ModuleMissing`]. Blocks: run it off the runtime.
    pub fn deploy(
        &self,
        manifest: FunctionManifest,
        module: Option<&[u8]>,
    ) -> Result<(Source, Duration), DeployError> {
        let kept;
        let by_content_id = module.is_none();
        let module = match module {
            Some(module) => module,
            None => {
                kept = self
                    .cache
                    .blob(&manifest.content_id)
                    .ok_or_else(|| DeployError::ModuleMissing(manifest.content_id.clone()))?;
                &kept
            }
        };
        let limits = deployment::check(&manifest, module, &self.config)?;
        let _deploying = self.deploying.lock().unwrap_or_else(|p| p.into_inner());
        self.cache.store_blob(&manifest.content_id, module)?;
        let id = manifest.deployment_id();
        let known = self.deployment(&id);
        let deployment = known
            .clone()
            .unwrap_or_else(|| Arc::new(Deployment::new(manifest, limits)));
        let loaded = self.cache.load(
            &deployment.manifest.name,
            &deployment.manifest.content_id,
            deployment.limits.memory_limit_mib,
        )?;
        let (source, took) = (loaded.source, loaded.blob + loaded.load);
        if known.is_none() {
            // Instantiated once here, so a module that cannot be is refused before any
            // request runs it.
            invoke::prepare(&loaded.runnable).map_err(DeployError::Instantiate)?;
            tracing::info!(deployment = %id, source = ?source, by_content_id, ms = took.as_secs_f64() * 1e3, "deployed");
            self.deployments.insert(id, Arc::clone(&deployment));
        }
        if self.warm_pool(&deployment).is_none() {
            self.warm_up(&deployment, loaded);
        }
        Ok((source, took))
    }

    /// Drops deployment `id` (a version no longer routed): its pool goes, so it leaves
    /// the warm set gossip announces; calls running on it finish, new ones are refused
    /// `not-found`. The module stays in the blob store and compiled cache for other
    /// deployments of it. Whether it was loaded.
    pub fn undeploy(&self, id: &DeploymentId) -> bool {
        let Some((_, deployment)) = self.deployments.remove(id) else {
            return false;
        };
        self.cache.drop_pool(&deployment.module_key(), id);
        tracing::info!(deployment = %id, "undeployed: no longer routed");
        true
    }

    /// The deployment with this id, if loaded.
    pub fn deployment(&self, id: &DeploymentId) -> Option<Arc<Deployment>> {
        self.deployments.get(id).map(|d| Arc::clone(&d))
    }

    /// Runs a call of `deployment`: waits for admission, warms it if cold, runs a fresh
    /// instance under the limits, parses the CGI answer.
    pub async fn invoke(
        &self,
        deployment: &Arc<Deployment>,
        call: Call,
    ) -> Result<Answer, Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.draining.load(Ordering::Relaxed) {
            self.refused_draining.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Refused(Refusal::Draining));
        }
        let _from = call
            .gateway
            .as_deref()
            .map(|gateway| FromGateway::start(&self.from_gateways, gateway));
        let mut timing = ServerTiming::default();
        let limits = &deployment.limits;
        // Admitted before it may load: a cold load holds a slot like a run, so a burst
        // of cold requests starts no more compiles than the node has slots.
        let admitted = self
            .admitter
            .admit(&deployment.id, self.admission(deployment))
            .await;
        let Ok((permit, queued)) = admitted else {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Refused(Refusal::Overloaded));
        };
        timing.push("queue", queued);
        let (pool, cold) = self.pool_of(deployment, &mut timing).await?;
        pool.record(self.admitter.function_usage(&deployment.id).0);

        let deadline = limits.deadline(call.deadline);
        let (chunks_in, mut chunks) = tokio::sync::mpsc::channel(STREAM_DEPTH);
        let request = CgiRequest::of(
            &call.request,
            &call.script_name,
            call.body.len(),
            &call.request_id,
        );
        let invocation = Invocation {
            env: cgi::environment(&request, &deployment.env),
            log: LogContext {
                request_id: call.request_id,
                traceparent: call.request.headers().get(TRACEPARENT).cloned(),
                tail: self.tails.sender().map(|events| Tail {
                    events,
                    deployment: deployment.id.as_str().to_string(),
                }),
            },
            stdin: call.body,
            stdout_limit: limits.stdout_limit(),
            fuel: limits.fuel(self.config.fuel_per_ms),
            deadline: Instant::now() + deadline,
            stream: Some(StdoutStream {
                chunks: chunks_in,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        let job_pool = Arc::clone(&pool);
        let mut job = self.workers.submit(move |ready| {
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
        // The run ends, or its stdout outgrows one chunk first and the answer streams.
        let timeout = tokio::time::sleep(deadline);
        let done = tokio::select! {
            biased;
            done = &mut job => done,
            Some(first) = chunks.recv() => {
                return streaming(limits, first, chunks, job, timing);
            }
            () = timeout => return Err(Failure::Deadline(deadline)),
        };
        let (mut completed, instantiate) = done.map_err(|_| Failure::Internal)??;
        if completed.streamed {
            // It ended as its first chunks went out: the answer is whole after all.
            let mut whole = Vec::new();
            while let Ok(chunk) = chunks.try_recv() {
                whole.extend_from_slice(&chunk);
            }
            whole.append(&mut completed.stdout);
            completed.stdout = whole;
        }
        self.note_run(completed.run);
        if cold {
            deployment
                .cold
                .instantiate_us
                .fetch_add(micros(instantiate), Ordering::Relaxed);
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
            rest: None,
            timing,
            run: completed.run,
            fuel_used: completed.fuel_used,
            memory_bytes: completed.memory_bytes,
        })
    }

    /// The deployment's instance pool, and whether this request found it cold and
    /// loaded its module (once, however many requests wait for it, on a worker thread).
    /// Adds the cold-start phases to `timing`.
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
        let _warming = self.start_warming(&deployment.id);
        let fetched = self
            .fetch_artifact(&deployment.id, &deployment.manifest.content_id, &[])
            .await;
        let cache = Arc::clone(&self.cache);
        let (name, id, limit) = (
            deployment.manifest.name.clone(),
            deployment.manifest.content_id.clone(),
            deployment.limits.memory_limit_mib,
        );
        let loads = &self.loads;
        let now = loads.0.fetch_add(1, Ordering::Relaxed) + 1;
        loads.1.fetch_max(now, Ordering::Relaxed);
        let loaded = self
            .workers
            .run(move |_| (cache.load(&name, &id, limit), ()))
            .await;
        loads.0.fetch_sub(1, Ordering::Relaxed);
        let loaded = loaded.map_err(|_| Failure::Internal)?;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(LoadError::Missing(content_id)) => {
                tracing::warn!(deployment = %deployment.id, %content_id, "module gone from the blob store; asking for a redeploy");
                self.deployments.remove(&deployment.id);
                return Err(Failure::Refused(Refusal::NotFound));
            }
            Err(e) => return Err(Failure::Load(e.to_string())),
        };
        let (source, blob, load) = (loaded.source, loaded.blob, loaded.load);
        let pool = self.warm_up(deployment, loaded);
        deployment.cold.record(blob, load);
        timing.push("cold", started.elapsed());
        if let Some(fetched) = fetched {
            timing.push("fetch", fetched);
        }
        timing.push("blob", blob);
        timing.push(
            match source {
                Source::Compiled => "compile",
                Source::Disk | Source::Memory | Source::Peer => "deserialize",
            },
            load,
        );
        tracing::info!(deployment = %deployment.id, source = ?source, ms = started.elapsed().as_secs_f64() * 1e3, "cold start");
        Ok((pool, true))
    }

    /// What a call of `deployment` is admitted under: its limits, and a reservation of
    /// its linear memory's limit plus its tables at their cap.
    fn admission(&self, deployment: &Deployment) -> edge_shared::admission::FunctionLimits {
        let mut admission = deployment.limits.admission(self.workers.size());
        admission.memory +=
            u64::from(self.config.max_table_elements) * crate::runtime::engine::TABLE_ELEMENT_BYTES;
        admission
    }

    /// The deployment's pool while its module is in memory (a use of the module).
    pub(crate) fn warm_pool(&self, deployment: &Deployment) -> Option<Arc<InstancePool>> {
        self.cache.pool(&deployment.module_key(), &deployment.id)
    }

    /// Makes `deployment` warm with the module just loaded: a pool the module cache
    /// keeps with the module, announced to the workers so they fill it.
    fn warm_up(&self, deployment: &Deployment, loaded: Loaded) -> Arc<InstancePool> {
        let max_concurrency = deployment
            .limits
            .admission(self.workers.size())
            .max_concurrency;
        let pool = Arc::new(InstancePool::new(
            deployment.id.clone(),
            loaded.runnable,
            PoolSizer::new(
                self.config
                    .instance_pool
                    .max_per_function
                    .min(max_concurrency),
                Duration::from_millis(self.config.instance_pool.idle_ttl_ms),
                Instant::now(),
            ),
            self.workers.size(),
        ));
        if self
            .cache
            .keep_pool(&deployment.module_key(), &deployment.id, &pool)
        {
            self.workers.announce(&pool);
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
    /// drain at the recent run time.
    pub fn retry_after_secs(&self) -> u64 {
        let usage = self.admitter.usage();
        retry_after_secs(
            Duration::from_nanos(self.ewma_run_ns.load(Ordering::Relaxed)),
            usage.queued + usage.running,
            self.workers.size(),
        )
    }

    /// Drops from memory the compiled modules whose functions have all been idle for
    /// `module_idle_ttl_ms` (scale to zero): they leave the warm set, and their next
    /// request deserializes the artifact. Blocks (the modules' code is unmapped here).
    pub fn scale_down_idle(&self) {
        let ttl = self.config.module_idle_ttl_ms;
        if ttl == 0 {
            return;
        }
        for content_id in self.cache.evict_idle(Duration::from_millis(ttl)) {
            tracing::info!(%content_id, idle_ms = ttl, "idle module left memory");
        }
    }

    /// Marks the node as draining: new invocations are refused with `draining`.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Requests running right now.
    pub fn busy(&self) -> usize {
        self.admitter.usage().running
    }

    /// Shows `gossip`'s counters and membership in the status from now on.
    pub fn attach_gossip(&self, gossip: Arc<Gossip>) {
        let _ = self.gossip.set(gossip);
    }
}

/// Counts one request from a gateway while alive.
struct FromGateway<'a> {
    counts: &'a Mutex<HashMap<String, usize>>,
    gateway: &'a str,
}

impl<'a> FromGateway<'a> {
    fn start(counts: &'a Mutex<HashMap<String, usize>>, gateway: &'a str) -> FromGateway<'a> {
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

/// Chunks of stdout a streaming answer may have on their way at once: with the chunk
/// being written, what a slow reader makes the node hold per request.
const STREAM_DEPTH: usize = 4;

/// The answer whose stdout outgrew one chunk while the function still runs: its head
/// from the first chunk, the rest to come.
fn streaming(
    limits: &EffectiveLimits,
    first: Bytes,
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    done: Submitted<JobResult>,
    timing: ServerTiming,
) -> Result<Answer, Failure> {
    let head = cgi::parse_response(&first)?;
    let limit = limits.max_response_body_bytes;
    let body_left = limit
        .checked_sub((first.len() - head.body_start) as u64)
        .ok_or(RunError::ResponseTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        })?;
    Ok(Answer {
        head,
        output: first,
        rest: Some(Streaming {
            chunks,
            done,
            body_left,
            over_limit: false,
            limit,
        }),
        timing,
        run: Duration::ZERO,
        fuel_used: 0,
        memory_bytes: 0,
    })
}
