//! The functions a gateway serves: each one's manifest, deployment id, limits in force,
//! and the deploy body nodes get; the route table that finds them; and the checks a
//! deploy passes before the registry keeps it. Functions come from the registry
//! ([`crate::registry`]): the cluster file's at start, the admin API's later, by the
//! same path ([`deploy`]).

use std::sync::Arc;

use bytes::Bytes;
use edge_net::gossip::fingerprint;
use edge_shared::config::{GatewayConfig, LimitDefaults};
use edge_shared::limits::EffectiveLimits;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::check_module;
use edge_shared::routes::{RouteTable, default_routes};
use edge_shared::wire;

use crate::registry::{Deployed, FunctionSpec, Registry, RegistryError, RolledBack};

/// A function the gateway serves.
pub struct Function {
    /// Its manifest.
    pub manifest: FunctionManifest,
    /// Its deployment id.
    pub deployment: DeploymentId,
    /// The deployment id's fingerprint: how warm sets and routing know it.
    pub key: u64,
    /// Its limits in force at the gateway.
    pub limits: EffectiveLimits,
    /// Body of the deploy request nodes get (manifest and module).
    pub deploy_body: Bytes,
    /// Its version in the registry.
    pub version: u64,
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
        let manifest = FunctionManifest {
            name: name.to_string(),
            content_id: ContentId::of(module),
            routes: if spec.routes.is_empty() {
                default_routes(name, &config.domain)
            } else {
                spec.routes.clone()
            },
            env: spec.env.clone(),
            limits: spec.limits.clone(),
        };
        if let Err(problems) = manifest.validate() {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(Refusal::Invalid(text.join("; ")));
        }
        // The gateway enforces the request body; its cap is the default, and a
        // function's own limit may lower it, never raise it.
        let defaults = LimitDefaults {
            max_request_body_bytes: config.max_request_body_bytes,
            ..LimitDefaults::default()
        };
        let mut limits = EffectiveLimits::resolve(&manifest.limits, &defaults);
        limits.max_request_body_bytes = limits
            .max_request_body_bytes
            .min(config.max_request_body_bytes);
        let deployment = manifest.deployment_id();
        Ok(Function {
            key: fingerprint(deployment.as_str()),
            limits,
            deploy_body: Bytes::from(wire::encode_deploy_body(&manifest, module)),
            deployment,
            manifest,
            version,
        })
    }
}

/// Every function served, and the routes to them.
pub struct Functions {
    /// The functions, by name.
    pub list: Vec<Arc<Function>>,
    /// Host and path routes to them (indexes into `list`).
    pub routes: RouteTable,
}

impl Functions {
    /// These functions and their route table; a route two claim is a conflict naming
    /// both.
    pub fn new(mut list: Vec<Arc<Function>>) -> Result<Functions, Refusal> {
        list.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        let manifests: Vec<FunctionManifest> = list.iter().map(|f| f.manifest.clone()).collect();
        let routes = RouteTable::new(&manifests).map_err(Refusal::Conflict)?;
        Ok(Functions { list, routes })
    }

    /// The functions the registry holds, each at the version serving.
    pub async fn from_registry(
        registry: &dyn Registry,
        config: &GatewayConfig,
    ) -> Result<Functions, Refusal> {
        let mut list = Vec::new();
        for record in registry.functions().await? {
            let Some(version) = record.serving() else {
                continue;
            };
            let module = registry.module(&version.content_id).await?.ok_or_else(|| {
                Refusal::Invalid(format!(
                    "function {:?}: module {} missing from the registry",
                    record.name,
                    version.content_id.as_str()
                ))
            })?;
            let function =
                Function::new(&record.name, &version.spec, &module, version.number, config)?;
            list.push(Arc::new(function));
        }
        Functions::new(list)
    }

    /// These functions with `function` in place of its name's.
    fn with(&self, function: Function) -> Result<Functions, Refusal> {
        let mut list: Vec<Arc<Function>> = self
            .list
            .iter()
            .filter(|f| f.manifest.name != function.manifest.name)
            .cloned()
            .collect();
        list.push(Arc::new(function));
        Functions::new(list)
    }
}

/// Deploys `module` with `spec` as function `name`: checked against `current` (a route
/// another function has is a conflict), then kept in `registry`, durably. Returns the
/// version and the functions to serve from now on. Refused, nothing changes.
pub async fn deploy(
    registry: &dyn Registry,
    current: &Functions,
    config: &GatewayConfig,
    name: &str,
    spec: FunctionSpec,
    module: Bytes,
) -> Result<(Deployed, Functions), Refusal> {
    // Checked with a provisional version: its routes and limits do not depend on it.
    current.with(Function::new(name, &spec, &module, 0, config)?)?;
    let deployed = registry.deploy(name, spec.clone(), module.clone()).await?;
    let function = Function::new(name, &spec, &module, deployed.version, config)?;
    Ok((deployed, current.with(function)?))
}

/// Rolls function `name` back to version `to`, or to the one that served before the one
/// serving: a new version with that one's module and settings, checked against
/// `current` like a deploy, then kept. Refused, nothing changes.
pub async fn rollback(
    registry: &dyn Registry,
    current: &Functions,
    config: &GatewayConfig,
    name: &str,
    to: Option<u64>,
) -> Result<(RolledBack, Functions), Refusal> {
    let records = registry.functions().await?;
    let record = records
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| RegistryError::NotFound(format!("no function {name:?}")))?;
    let target = record.rollback_target(to)?;
    let module = registry.module(&target.content_id).await?.ok_or_else(|| {
        RegistryError::NotFound(format!("the module of version {}", target.number))
    })?;
    current.with(Function::new(name, &target.spec, &module, 0, config)?)?;
    let rolled = registry.rollback(name, to).await?;
    let function = Function::new(name, &target.spec, &module, rolled.version, config)?;
    Ok((rolled, current.with(function)?))
}
