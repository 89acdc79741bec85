//! The functions a gateway serves: each version taking traffic with its manifest,
//! deployment id, limits in force and the deploy body nodes get; how a function's
//! traffic is split between its versions; the route table that finds them; and the
//! checks a deploy, a traffic change or a rollback passes before the registry keeps it.
//! Functions come from the registry ([`crate::registry`]): the cluster file's at start,
//! the admin API's later, by the same path ([`deploy`]), and, with a shared registry,
//! the changes other gateways made ([`Functions::apply`]).

use std::sync::Arc;

use bytes::Bytes;
use edge_net::gossip::fingerprint;
use edge_shared::config::{GatewayConfig, LimitDefaults};
use edge_shared::limits::EffectiveLimits;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::check_module;
use edge_shared::retry_budget::RetryBudget;
use edge_shared::routes::{RouteTable, default_routes};
use edge_shared::wire;

use edge_shared::demand::Demand;

use crate::registry::{
    Deployed, FunctionRecord, FunctionSpec, Registry, RegistryError, RolledBack, Share, check_split,
};

/// A version of a function the gateway serves.
pub struct Function {
    /// Its manifest.
    pub manifest: FunctionManifest,
    /// Its deployment id.
    pub deployment: DeploymentId,
    /// The deployment id's fingerprint: how warm sets and routing know it.
    pub key: u64,
    /// Its limits in force at the gateway.
    pub limits: EffectiveLimits,
    /// Body of the deploy request nodes get: the manifest, then the module.
    pub deploy_body: Bytes,
    /// The manifest's line alone: a deploy naming the module by content id, for a node
    /// that holds it already.
    pub manifest_body: Bytes,
    /// Its version in the registry.
    pub version: u64,
    /// Whether it is compiled on its home node before it takes traffic.
    pub precompile: bool,
    /// Its arrivals at this gateway, for the pre-warm projection.
    pub demand: std::sync::Mutex<Demand>,
    /// Nodes this gateway has loaded it on, the latest last (at most
    /// [`wire::MAX_HOLDERS`]): named to a node it loads on next, which may take the
    /// compiled artifact from them before gossip shows them warm.
    pub loaded_on: std::sync::Mutex<Vec<std::net::SocketAddr>>,
    /// How many of its requests refused for overload may still go to another node.
    pub retry_budget: RetryBudget,
}

impl Function {
    /// Records that it loaded on `node`.
    pub fn loaded(&self, node: std::net::SocketAddr) {
        let mut on = self.loaded_on.lock().unwrap_or_else(|p| p.into_inner());
        on.retain(|&n| n != node);
        if on.len() == wire::MAX_HOLDERS {
            on.remove(0);
        }
        on.push(node);
    }

    /// The nodes it loaded on other than `node`, as a [`wire::HOLDERS_HEADER`] value.
    pub fn holders_for(&self, node: std::net::SocketAddr) -> Option<String> {
        let on = self.loaded_on.lock().unwrap_or_else(|p| p.into_inner());
        let others: Vec<String> = on
            .iter()
            .filter(|&&n| n != node)
            .map(ToString::to_string)
            .collect();
        (!others.is_empty()).then(|| others.join(","))
    }
}

/// Why a deploy was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The name, the module, the spec or a limit is not valid (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// A route is another function's (the message names it).
    #[error("{0}")]
    Conflict(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The manifest nodes get for version `spec` of function `name` with module
/// `content_id`: its deployment id names the version on every node.
pub fn manifest_of(
    name: &str,
    spec: &FunctionSpec,
    content_id: ContentId,
    domain: &str,
) -> FunctionManifest {
    FunctionManifest {
        name: name.to_string(),
        content_id,
        routes: if spec.routes.is_empty() {
            default_routes(name, domain)
        } else {
            spec.routes.clone()
        },
        env: spec.env.clone(),
        secrets: spec.secrets.clone(),
        limits: spec.limits.clone(),
    }
}

impl Function {
    /// The function `name` serves as with `spec` and `module`, checked: the module
    /// passes the node's checks and the manifest every field's.
    pub fn new(
        name: &str,
        spec: &FunctionSpec,
        module: &[u8],
        version: u64,
        config: &GatewayConfig,
    ) -> Result<Function, Refusal> {
        check_module(module).map_err(|e| Refusal::Invalid(format!("module: {e}")))?;
        let manifest = manifest_of(name, spec, ContentId::of(module), &config.domain);
        let out_of_range = limits_out_of_range(&spec.limits, config);
        if !out_of_range.is_empty() {
            return Err(Refusal::Invalid(out_of_range.join("; ")));
        }
        if let Some(schedule) = &spec.schedule {
            crate::schedule::Schedule::parse(schedule)
                .map_err(|e| Refusal::Invalid(format!("schedule: {e}")))?;
        }
        if let Err(problems) = manifest.validate() {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(Refusal::Invalid(text.join("; ")));
        }
        // The gateway enforces the request body; its cap is the default, and a
        // function's own limit may lower it (a higher one is refused above).
        let defaults = LimitDefaults {
            max_request_body_bytes: config.max_request_body_bytes,
            ..LimitDefaults::default()
        };
        let limits = EffectiveLimits::resolve(&manifest.limits, &defaults);
        let deployment = manifest.deployment_id();
        Ok(Function {
            key: fingerprint(deployment.as_str()),
            limits,
            deploy_body: Bytes::from(wire::encode_deploy_body(&manifest, module)),
            manifest_body: Bytes::from(wire::encode_deploy_body(&manifest, &[])),
            deployment,
            manifest,
            version,
            precompile: spec.precompile,
            demand: std::sync::Mutex::default(),
            loaded_on: std::sync::Mutex::default(),
            retry_budget: RetryBudget::new(&config.retry_budget),
        })
    }
}

/// The most memory a wasm32 module can address, in MiB.
const MAX_MEMORY_MIB: u64 = 4096;
/// The most requests of one function a node may run at once, and queue.
const MAX_CONCURRENCY: u32 = 4096;
const MAX_QUEUE_DEPTH: u32 = 65_536;

/// What in `limits` no request could honour at this gateway, each naming the field:
/// a time over the gateway's own request timeout, memory over wasm32's 4 GiB, a body
/// over the gateway's cap, concurrency or queue past their bounds. (Zero is refused by
/// the manifest's own check.)
fn limits_out_of_range(
    limits: &edge_shared::manifest::Limits,
    config: &GatewayConfig,
) -> Vec<String> {
    let mut problems = Vec::new();
    let timeout = config.request_timeout_ms;
    for (field, value) in [
        ("timeout_ms", limits.timeout_ms),
        ("queue_timeout_ms", limits.queue_timeout_ms),
    ] {
        if let Some(v) = value.filter(|v| *v > timeout) {
            problems.push(format!(
                "limits.{field}: {v} is over the gateway's request_timeout_ms ({timeout})"
            ));
        }
    }
    if let Some(v) = limits.memory_limit_mib.filter(|v| *v > MAX_MEMORY_MIB) {
        problems.push(format!(
            "limits.memory_limit_mib: {v} is over wasm32's {MAX_MEMORY_MIB} MiB"
        ));
    }
    let body = config.max_request_body_bytes;
    if let Some(v) = limits.max_request_body_bytes.filter(|v| *v > body) {
        problems.push(format!("limits.max_request_body_bytes: {v} is over the gateway's max_request_body_bytes ({body})"));
    }
    if let Some(v) = limits.max_concurrency.filter(|v| *v > MAX_CONCURRENCY) {
        problems.push(format!(
            "limits.max_concurrency: {v} is over {MAX_CONCURRENCY}"
        ));
    }
    if let Some(v) = limits.queue_depth.filter(|v| *v > MAX_QUEUE_DEPTH) {
        problems.push(format!("limits.queue_depth: {v} is over {MAX_QUEUE_DEPTH}"));
    }
    problems
}

/// A function's versions taking traffic, and how its requests are split between them.
pub struct Served {
    /// The function's name.
    pub name: String,
    /// Each version with its percentage: one at 100, or two adding to 100 (a version
    /// at 0 is reached only by a request naming it).
    pub shares: Vec<(Arc<Function>, u8)>,
    /// The cron schedule it is invoked on (its primary version's), if any.
    pub schedule: Option<String>,
    /// The registry record's generation it was built from.
    pub generation: u64,
}

impl Served {
    /// The version taking the most traffic, the newer at a tie: its routes are the
    /// function's.
    pub fn primary(&self) -> &Arc<Function> {
        let (function, _) = self
            .shares
            .iter()
            .max_by_key(|(f, percent)| (*percent, f.version))
            .expect("a served function has a version");
        function
    }

    /// The version for a request whose split key hashes to `key`: the share its bucket
    /// (`key % 100`) falls in. The same key always picks the same version.
    pub fn pick(&self, key: u64) -> &Arc<Function> {
        let bucket = (key % 100) as u8;
        let mut below = 0u8;
        for (function, percent) in &self.shares {
            below = below.saturating_add(*percent);
            if bucket < below {
                return function;
            }
        }
        self.primary()
    }

    /// Version `number`, if it takes traffic (at any percentage, 0 too).
    pub fn version(&self, number: u64) -> Option<&Arc<Function>> {
        self.shares
            .iter()
            .map(|(f, _)| f)
            .find(|f| f.version == number)
    }
}

/// Every function served, and the routes to them.
pub struct Functions {
    /// The functions, by name.
    pub list: Vec<Served>,
    /// Host and path routes to them (indexes into `list`).
    pub routes: RouteTable,
}

impl Functions {
    /// These functions and their route table (each function's primary version's
    /// routes); a route two claim is a conflict naming both.
    pub fn new(mut list: Vec<Served>) -> Result<Functions, Refusal> {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let manifests: Vec<FunctionManifest> =
            list.iter().map(|s| s.primary().manifest.clone()).collect();
        let routes = RouteTable::new(&manifests).map_err(Refusal::Conflict)?;
        Ok(Functions { list, routes })
    }

    /// No functions.
    pub fn none() -> Functions {
        Functions::new(Vec::new()).expect("no routes cannot collide")
    }

    /// Every version taking traffic, of every function.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.list
            .iter()
            .flat_map(|s| s.shares.iter().map(|(f, _)| f))
    }

    /// Function `name`, if served.
    pub fn named(&self, name: &str) -> Option<&Served> {
        self.list.iter().find(|s| s.name == name)
    }

    /// The functions the registry holds, each with its versions taking traffic.
    pub async fn from_registry(
        registry: &dyn Registry,
        config: &GatewayConfig,
    ) -> Result<Functions, Refusal> {
        let mut functions = Functions::none();
        for record in registry.functions().await? {
            functions = functions.apply(registry, config, &record).await?;
        }
        Ok(functions)
    }

    /// These functions with `record` in force for its function: its versions taking
    /// traffic are loaded (from these functions if served already, else from the
    /// registry) and checked.
    pub async fn apply(
        &self,
        registry: &dyn Registry,
        config: &GatewayConfig,
        record: &FunctionRecord,
    ) -> Result<Functions, Refusal> {
        self.with(self.served(registry, config, record, None).await?)
    }

    /// These functions without `name`.
    pub fn without(&self, name: &str) -> Functions {
        let rest = self
            .list
            .iter()
            .filter(|s| s.name != name)
            .map(Served::clone_of);
        Functions::new(rest.collect()).expect("fewer routes cannot collide")
    }

    /// These functions with `served` in place of its name's.
    fn with(&self, served: Served) -> Result<Functions, Refusal> {
        let mut list: Vec<Served> = self
            .list
            .iter()
            .filter(|s| s.name != served.name)
            .map(Served::clone_of)
            .collect();
        list.push(served);
        Functions::new(list)
    }

    /// The versions of `record` taking traffic, as served: each reused if these
    /// functions serve it, else built from its module (`fresh` if it is that one, else
    /// the registry's). The versions of a split must have the same routes.
    async fn served(
        &self,
        registry: &dyn Registry,
        config: &GatewayConfig,
        record: &FunctionRecord,
        fresh: Option<&Bytes>,
    ) -> Result<Served, Refusal> {
        let name = &record.name;
        let mut shares = Vec::new();
        for share in &record.traffic {
            let version = record.version(share.version).ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "function {name:?} has no version {}",
                    share.version
                ))
            })?;
            let known = self
                .named(name)
                .and_then(|s| s.version(version.number))
                .filter(|f| f.manifest.content_id == version.content_id);
            let function = match known {
                Some(f) => Arc::clone(f),
                None => {
                    let module = match fresh.filter(|m| ContentId::of(m) == version.content_id) {
                        Some(module) => module.clone(),
                        None => registry.module(&version.content_id).await?.ok_or_else(|| {
                            Refusal::Invalid(format!(
                                "function {name:?}: module {} missing from the registry",
                                version.content_id.as_str()
                            ))
                        })?,
                    };
                    Arc::new(Function::new(
                        name,
                        &version.spec,
                        &module,
                        version.number,
                        config,
                    )?)
                }
            };
            shares.push((function, share.percent));
        }
        if let [(a, _), (b, _)] = shares.as_slice()
            && a.manifest.routes != b.manifest.routes
        {
            return Err(Refusal::Conflict(format!(
                "traffic: versions {} and {} of {name:?} have different routes; a split needs one set",
                a.version, b.version
            )));
        }
        if shares.is_empty() {
            return Err(Refusal::Invalid(format!(
                "function {name:?} has no version taking traffic"
            )));
        }
        let schedule = record.primary().and_then(|v| v.spec.schedule.clone());
        Ok(Served {
            name: name.clone(),
            shares,
            schedule,
            generation: record.generation,
        })
    }
}

impl Served {
    fn clone_of(&self) -> Served {
        Served {
            name: self.name.clone(),
            shares: self.shares.clone(),
            schedule: self.schedule.clone(),
            generation: self.generation,
        }
    }
}

/// Deploys `module` with `spec` as a version of function `name`, serving all its
/// traffic or, without `promote`, 0% beside the version serving all. Checked against
/// `current` first (a route another function has is a conflict), then kept in
/// `registry`, durably. Returns the version and the functions to serve from now on.
/// Refused, nothing changes.
pub async fn deploy(
    registry: &dyn Registry,
    current: &Functions,
    config: &GatewayConfig,
    name: &str,
    spec: FunctionSpec,
    module: Bytes,
    promote: bool,
) -> Result<(Deployed, Functions), Refusal> {
    // Checked with a provisional version: its routes and limits do not depend on it.
    Function::new(name, &spec, &module, 0, config)?;
    let mut prospect = registry
        .function(name)
        .await?
        .unwrap_or_else(|| FunctionRecord::new(name));
    prospect.deploy(ContentId::of(&module), spec.clone(), promote, 0)?;
    current.with(
        current
            .served(registry, config, &prospect, Some(&module))
            .await?,
    )?;
    let (deployed, record) = registry.deploy(name, spec, module.clone(), promote).await?;
    let next = current.with(
        current
            .served(registry, config, &record, Some(&module))
            .await?,
    )?;
    Ok((deployed, next))
}

/// Splits function `name`'s traffic as `shares` say, checked against `current` like a
/// deploy, then kept. Refused, nothing changes.
pub async fn set_traffic(
    registry: &dyn Registry,
    current: &Functions,
    config: &GatewayConfig,
    name: &str,
    shares: Vec<Share>,
) -> Result<(FunctionRecord, Functions), Refusal> {
    check_split(&shares).map_err(Refusal::Invalid)?;
    let mut prospect = registry
        .function(name)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no function {name:?}")))?;
    prospect.set_traffic(&shares)?;
    current.with(current.served(registry, config, &prospect, None).await?)?;
    let record = registry.set_traffic(name, shares).await?;
    let next = current.apply(registry, config, &record).await?;
    Ok((record, next))
}

/// Rolls function `name` back to version `to`, or to the previous version that served
/// all its traffic: a new version with that one's module and settings, checked against
/// `current` like a deploy, then kept. Refused, nothing changes.
pub async fn rollback(
    registry: &dyn Registry,
    current: &Functions,
    config: &GatewayConfig,
    name: &str,
    to: Option<u64>,
) -> Result<(RolledBack, Functions), Refusal> {
    let mut prospect = registry
        .function(name)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no function {name:?}")))?;
    prospect.rollback(to, 0)?;
    current.with(current.served(registry, config, &prospect, None).await?)?;
    let (rolled, record) = registry.rollback(name, to).await?;
    let next = current.apply(registry, config, &record).await?;
    Ok((rolled, next))
}
