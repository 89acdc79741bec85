//! A deployment on this node, and the checks a deploy passes before anything is stored
//! or compiled (pure: the manifest, the module's hash and wasm checks, the limits
//! against this node's budget).

use std::time::Duration;

use edge_shared::config::NodeConfig;
use edge_shared::limits::EffectiveLimits;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::{ModuleError, check_module};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::cache::{LoadError, ModuleKey};
use crate::runtime::invoke::RunError;

/// A deployment loaded on this node.
pub struct Deployment {
    /// Its id.
    pub id: DeploymentId,
    /// What the gateway announced.
    pub manifest: FunctionManifest,
    /// The limits in force, computed once at deploy.
    pub limits: EffectiveLimits,
    /// The function's own environment variables, its secrets among them.
    pub(crate) env: Vec<(String, String)>,
    /// Held while the module loads, so concurrent cold requests load it once.
    pub(crate) loading: tokio::sync::Mutex<()>,
    pub(crate) cold: ColdStats,
}

impl Deployment {
    /// A deployment of `manifest` under `limits` (from [`check`]).
    pub(crate) fn new(manifest: FunctionManifest, limits: EffectiveLimits) -> Deployment {
        Deployment {
            id: manifest.deployment_id(),
            env: manifest
                .env
                .iter()
                .chain(&manifest.secrets.0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            manifest,
            limits,
            loading: tokio::sync::Mutex::new(()),
            cold: ColdStats::default(),
        }
    }

    /// Its compiled module's key in the module cache.
    pub(crate) fn module_key(&self) -> ModuleKey {
        (
            self.manifest.content_id.clone(),
            self.limits.memory_limit_mib,
        )
    }
}

/// Cold starts of one deployment on the request path, and the time of each phase.
#[derive(Debug, Default)]
pub(crate) struct ColdStats {
    pub(crate) count: AtomicU64,
    pub(crate) blob_us: AtomicU64,
    pub(crate) load_us: AtomicU64,
    pub(crate) instantiate_us: AtomicU64,
}

impl ColdStats {
    /// Counts one cold start that read the blob for `blob` and loaded for `load`.
    pub(crate) fn record(&self, blob: Duration, load: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.blob_us.fetch_add(micros(blob), Ordering::Relaxed);
        self.load_us.fetch_add(micros(load), Ordering::Relaxed);
    }
}

/// Microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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
    /// The deploy named its module by content id, and this node does not hold it.
    #[error("module {0} is not on this node: send it")]
    ModuleMissing(ContentId),
    /// The module compiled but cannot be instantiated (say, its memory's minimum is
    /// over the function's memory limit).
    #[error("module cannot be instantiated: {0}")]
    Instantiate(RunError),
}

/// Checks a deploy of `manifest` with `module` on a node of `config`, before anything
/// is stored or compiled; returns the function's limits in force.
pub fn check(
    manifest: &FunctionManifest,
    module: &[u8],
    config: &NodeConfig,
) -> Result<EffectiveLimits, DeployError> {
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
    let limits = EffectiveLimits::resolve(&manifest.limits, &config.defaults);
    if limits.memory_limit_mib > config.memory_budget_mib {
        return Err(DeployError::Manifest(format!(
            "memory_limit_mib {} is over this node's memory budget of {} MiB",
            limits.memory_limit_mib, config.memory_budget_mib
        )));
    }
    Ok(limits)
}
