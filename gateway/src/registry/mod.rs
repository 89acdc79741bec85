//! The registry: every function's versions, its traffic and its modules, durable, behind
//! one trait. The embedded backend (the default) is a redb database in the gateway's
//! state folder; the shared one ([`crate::nats`]) is NATS JetStream.
//!
//! A version is immutable: a number per function (1, 2, ...), the module's content id,
//! and what the deploy said besides the module (routes, env, secrets, limits, schedule).
//! Deploying the same module and spec as the version serving all traffic returns that
//! version. A change is acknowledged only once it is durable: a gateway killed during a
//! deploy comes back with the old version or the new, never a part.
//!
//! Traffic goes to one version, or is split between two by percentage; a version may
//! take 0%, reachable only when a request names it. Each function keeps the history of
//! the versions that served all its traffic. A rollback is a deploy too: a new version
//! with the module and settings of an earlier one, serving all traffic at once, in one
//! write. Without a version named, it goes to the previous version that served 100%.
//!
//! How a record changes ([`FunctionRecord::deploy`], [`FunctionRecord::set_traffic`],
//! [`FunctionRecord::rollback`]) is the same for every backend; a backend makes the
//! read, the change and the write one step.
//!
//! [`record`] holds the records and how they change; [`embedded`] the redb backend;
//! the shared one is [`crate::nats`].

mod embedded;
mod record;

use std::collections::BTreeMap;

use bytes::Bytes;
use edge_shared::manifest::ContentId;

pub use embedded::Embedded;
pub use record::{
    Change, Changed, Deployed, FunctionRecord, FunctionSpec, MAX_SPLIT, RolledBack, RunRecord,
    Runs, Share, Version, check_split,
};

/// What the registry could not do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such function or version (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The call is not valid (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The call does not fit the function's state (the message says why).
    #[error("{0}")]
    Conflict(String),
    /// It could not be read or written.
    #[error("registry: {0}")]
    Storage(String),
}

impl RegistryError {
    pub(crate) fn of(e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Storage(e.to_string())
    }
}

/// Where functions, their versions and their modules are kept.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Makes `change` to function `name`'s record in one durable step, `module` stored
    /// first if given; what it made and the record after.
    async fn change(
        &self,
        name: &str,
        change: Change,
        module: Option<Bytes>,
    ) -> Result<(Changed, FunctionRecord), RegistryError>;

    /// Makes `module` with `spec` a version of `name` ([`FunctionRecord::deploy`]),
    /// durably. The caller has checked both.
    async fn deploy(
        &self,
        name: &str,
        spec: FunctionSpec,
        module: Bytes,
        promote: bool,
    ) -> Result<(Deployed, FunctionRecord), RegistryError> {
        let change = Change::Deploy {
            content_id: ContentId::of(&module),
            spec: Box::new(spec),
            promote,
        };
        match self.change(name, change, Some(module)).await? {
            (Changed::Deployed(deployed), record) => Ok((deployed, record)),
            (other, _) => Err(RegistryError::Storage(format!("a deploy made {other:?}"))),
        }
    }

    /// Splits `name`'s traffic as `shares` say ([`FunctionRecord::set_traffic`]).
    async fn set_traffic(
        &self,
        name: &str,
        shares: Vec<Share>,
    ) -> Result<FunctionRecord, RegistryError> {
        let (_, record) = self.change(name, Change::Traffic(shares), None).await?;
        Ok(record)
    }

    /// Rolls `name` back ([`FunctionRecord::rollback`]).
    async fn rollback(
        &self,
        name: &str,
        to: Option<u64>,
    ) -> Result<(RolledBack, FunctionRecord), RegistryError> {
        match self.change(name, Change::Rollback(to), None).await? {
            (Changed::RolledBack(rolled), record) => Ok((rolled, record)),
            (other, _) => Err(RegistryError::Storage(format!("a rollback made {other:?}"))),
        }
    }

    /// Every function, by name.
    async fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError>;

    /// Function `name`, if it is there.
    async fn function(&self, name: &str) -> Result<Option<FunctionRecord>, RegistryError> {
        Ok(self.functions().await?.into_iter().find(|r| r.name == name))
    }

    /// The module with this content id.
    async fn module(&self, content_id: &ContentId) -> Result<Option<Bytes>, RegistryError>;

    /// Removes `name` and its versions; whether it was there.
    async fn delete(&self, name: &str) -> Result<bool, RegistryError>;

    /// Takes or renews the scheduler lease for `holder` for `ttl`; whether it holds it.
    async fn lease(&self, holder: &str, ttl: std::time::Duration) -> Result<bool, RegistryError>;

    /// Claims tick `tick_ms` of `name`'s schedule: true for exactly one caller, and only
    /// if no later tick was claimed (compare-and-set).
    async fn claim_tick(&self, name: &str, tick_ms: u64) -> Result<bool, RegistryError>;

    /// Records the run of a claimed tick.
    async fn record_run(&self, name: &str, run: RunRecord) -> Result<(), RegistryError>;

    /// The schedule runs of each function that had any, by name.
    async fn runs(&self) -> Result<BTreeMap<String, Runs>, RegistryError>;

    /// The schedule runs of function `name` (none yet: the default).
    async fn runs_of(&self, name: &str) -> Result<Runs, RegistryError> {
        Ok(self.runs().await?.remove(name).unwrap_or_default())
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
