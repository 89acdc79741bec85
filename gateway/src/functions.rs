//! The functions a gateway serves: each one's manifest, deployment id, limits in force,
//! and the deploy body nodes get; and the route table that finds them.

use anyhow::Context;
use bytes::Bytes;
use edge_net::gossip::fingerprint;
use edge_shared::config::{GatewayConfig, LimitDefaults};
use edge_shared::limits::EffectiveLimits;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::check_module;
use edge_shared::routes::{RouteTable, default_routes};
use edge_shared::wire;

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
}

/// Every function served, and the routes to them.
pub struct Functions {
    /// The functions, in configuration order.
    pub list: Vec<Function>,
    /// Host and path routes to them (indexes into `list`).
    pub routes: RouteTable,
}

impl Functions {
    /// Loads and checks every function module of `config` and builds the route table.
    pub fn load(config: &GatewayConfig) -> anyhow::Result<Functions> {
        // The gateway enforces the request body; its cap is the default.
        let defaults = LimitDefaults {
            max_request_body_bytes: config.max_request_body_bytes,
            ..LimitDefaults::default()
        };
        let mut list = Vec::new();
        for f in &config.functions {
            let module = std::fs::read(&f.module).with_context(|| {
                format!("function {:?}: reading {}", f.name, f.module.display())
            })?;
            check_module(&module)
                .with_context(|| format!("function {:?}: module {}", f.name, f.module.display()))?;
            let manifest = FunctionManifest {
                name: f.name.clone(),
                content_id: ContentId::of(&module),
                routes: if f.routes.is_empty() {
                    default_routes(&f.name, &config.domain)
                } else {
                    f.routes.clone()
                },
                env: f.env.clone(),
                limits: f.limits.clone(),
            };
            if let Err(problems) = manifest.validate() {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::bail!("function {:?}: {}", f.name, text.join("; "));
            }
            let deployment = manifest.deployment_id();
            let mut limits = EffectiveLimits::resolve(&manifest.limits, &defaults);
            // A function's own limit may lower the gateway's cap, never raise it.
            limits.max_request_body_bytes = limits
                .max_request_body_bytes
                .min(config.max_request_body_bytes);
            list.push(Function {
                key: fingerprint(deployment.as_str()),
                limits,
                deploy_body: Bytes::from(wire::encode_deploy_body(&manifest, &module)),
                deployment,
                manifest,
            });
        }
        let manifests: Vec<FunctionManifest> = list.iter().map(|f| f.manifest.clone()).collect();
        let routes = RouteTable::new(&manifests).map_err(anyhow::Error::msg)?;
        Ok(Functions { list, routes })
    }
}
