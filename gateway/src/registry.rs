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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use edge_shared::manifest::{ContentId, Limits, Route, Secrets};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// What a deploy says besides the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// How users reach it; none means the defaults (`/NAME`, `NAME.<domain>`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Environment variables beside the CGI ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables never shown by the API nor logged.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
    /// A 5-field cron schedule it is invoked on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Whether a new version is compiled on its home node before it takes traffic (so
    /// no user's request waits on the compile); on by default.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub precompile: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_yes(b: &bool) -> bool {
    *b
}

impl Default for FunctionSpec {
    fn default() -> FunctionSpec {
        FunctionSpec {
            routes: Vec::new(),
            env: BTreeMap::new(),
            secrets: Secrets::default(),
            limits: Limits::default(),
            schedule: None,
            precompile: true,
        }
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number: 1 for the first, one more for each deploy that changed something.
    pub number: u64,
    /// The module's content id.
    pub content_id: ContentId,
    /// What the deploy said besides the module.
    pub spec: FunctionSpec,
    /// When it was deployed (Unix milliseconds).
    pub created_ms: u64,
    /// The version it is a rollback to, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
}

/// A version's share of a function's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The version.
    pub version: u64,
    /// Its percentage of the requests (0 to 100).
    pub percent: u8,
}

/// The most versions a function's traffic is split between.
pub const MAX_SPLIT: usize = 2;

/// A function: its versions and its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<Version>,
    /// Which versions take its requests: one at 100%, or two whose percentages add to
    /// 100.
    pub traffic: Vec<Share>,
    /// The versions that served all traffic, oldest first: a deploy adds its version,
    /// a rollback to the previous steps back.
    #[serde(default)]
    pub history: Vec<u64>,
    /// How many changes it has had: a gateway serving a record ignores an older one.
    #[serde(default)]
    pub generation: u64,
}

impl FunctionRecord {
    /// A function with no versions yet.
    pub fn new(name: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.to_string(),
            versions: Vec::new(),
            traffic: Vec::new(),
            history: Vec::new(),
            generation: 0,
        }
    }

    /// The version taking all traffic, if one does.
    pub fn serving_all(&self) -> Option<&Version> {
        match self.traffic.as_slice() {
            [only] => self.version(only.version),
            _ => None,
        }
    }

    /// The version taking the most traffic (the newer at a tie).
    pub fn primary(&self) -> Option<&Version> {
        let share = self.traffic.iter().max_by_key(|s| (s.percent, s.version))?;
        self.version(share.version)
    }

    /// Version `number`.
    pub fn version(&self, number: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    fn next_number(&self) -> u64 {
        self.versions.last().map_or(1, |v| v.number + 1)
    }

    /// Makes `module` (by its content id) with `spec` a version: serving all traffic,
    /// or with `promote` false 0% beside the version serving all. The same module and
    /// spec as the version serving all traffic is that version, unchanged.
    pub fn deploy(
        &mut self,
        content_id: ContentId,
        spec: FunctionSpec,
        promote: bool,
        now_ms: u64,
    ) -> Result<Deployed, RegistryError> {
        if let Some(serving) = self.serving_all()
            && serving.content_id == content_id
            && serving.spec == spec
        {
            return Ok(Deployed {
                version: serving.number,
                created: false,
            });
        }
        let number = self.next_number();
        if promote {
            self.traffic = vec![Share {
                version: number,
                percent: 100,
            }];
            self.history.push(number);
        } else {
            let Some(serving) = self.serving_all().map(|v| v.number) else {
                return Err(RegistryError::Conflict(format!(
                    "function {:?} has no version serving all its traffic to deploy beside; \
                     set its traffic to one version first",
                    self.name
                )));
            };
            self.traffic = vec![
                Share {
                    version: serving,
                    percent: 100,
                },
                Share {
                    version: number,
                    percent: 0,
                },
            ];
        }
        self.versions.push(Version {
            number,
            content_id,
            spec,
            created_ms: now_ms,
            restores: None,
        });
        Ok(Deployed {
            version: number,
            created: true,
        })
    }

    /// Splits the traffic as `shares` say (checked by [`check_split`]).
    pub fn set_traffic(&mut self, shares: &[Share]) -> Result<(), RegistryError> {
        check_split(shares).map_err(RegistryError::Invalid)?;
        for share in shares {
            if self.version(share.version).is_none() {
                return Err(RegistryError::NotFound(format!(
                    "function {:?} has no version {}",
                    self.name, share.version
                )));
            }
        }
        self.traffic = shares.to_vec();
        if let Some(only) = shares.iter().find(|s| s.percent == 100)
            && self.history.last() != Some(&only.version)
        {
            self.history.push(only.version);
        }
        Ok(())
    }

    /// The version a rollback goes to: `to`, or the previous version that served all
    /// traffic.
    pub fn rollback_target(&self, to: Option<u64>) -> Result<&Version, RegistryError> {
        let number = match to {
            Some(n) => n,
            None => {
                let serving = self.serving_all().map(|v| v.number);
                let back =
                    usize::from(serving.is_some() && self.history.last() == serving.as_ref());
                match self.history.len().checked_sub(1 + back) {
                    Some(i) => self.history[i],
                    None => {
                        return Err(RegistryError::Conflict(format!(
                            "function {:?} has no earlier version that served all its traffic",
                            self.name
                        )));
                    }
                }
            }
        };
        self.version(number).ok_or_else(|| {
            RegistryError::NotFound(format!("function {:?} has no version {number}", self.name))
        })
    }

    /// Makes a new version with the module and settings of the rollback target
    /// ([`FunctionRecord::rollback_target`]), serving all traffic.
    pub fn rollback(&mut self, to: Option<u64>, now_ms: u64) -> Result<RolledBack, RegistryError> {
        let target = self.rollback_target(to)?.clone();
        if to.is_none() {
            // Step back past the target, and past the version serving if it is the last.
            while let Some(last) = self.history.pop() {
                if last == target.number {
                    break;
                }
            }
        }
        let number = self.next_number();
        self.versions.push(Version {
            number,
            created_ms: now_ms,
            restores: Some(target.number),
            ..target.clone()
        });
        self.history.push(number);
        self.traffic = vec![Share {
            version: number,
            percent: 100,
        }];
        Ok(RolledBack {
            version: number,
            restores: target.number,
        })
    }
}

/// Checks a traffic split: one or two distinct versions whose percentages add to 100.
pub fn check_split(shares: &[Share]) -> Result<(), String> {
    if shares.is_empty() || shares.len() > MAX_SPLIT {
        return Err(format!(
            "traffic: one or {MAX_SPLIT} versions, not {}",
            shares.len()
        ));
    }
    if shares.len() == 2 && shares[0].version == shares[1].version {
        return Err(format!(
            "traffic: version {} is named twice",
            shares[0].version
        ));
    }
    let total: u32 = shares.iter().map(|s| u32::from(s.percent)).sum();
    if total != 100 {
        return Err(format!("traffic: the percentages add to {total}, not 100"));
    }
    Ok(())
}

/// What a deploy made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployed {
    /// The version serving now.
    pub version: u64,
    /// Whether it is new (else the same module and spec were serving already).
    pub created: bool,
}

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

/// What a rollback made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// The new version, serving.
    pub version: u64,
    /// The version whose module and settings it has.
    pub restores: u64,
}

/// A change to one function's record, the same for every backend.
#[derive(Debug, Clone)]
pub enum Change {
    /// [`FunctionRecord::deploy`] (a new record if the function has none).
    Deploy {
        /// The module's content id.
        content_id: ContentId,
        /// What the deploy says besides the module.
        spec: Box<FunctionSpec>,
        /// Whether it serves all traffic.
        promote: bool,
    },
    /// [`FunctionRecord::set_traffic`].
    Traffic(Vec<Share>),
    /// [`FunctionRecord::rollback`].
    Rollback(Option<u64>),
}

/// What a [`Change`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// A deploy's version.
    Deployed(Deployed),
    /// A traffic split, in force.
    Traffic,
    /// A rollback's new version.
    RolledBack(RolledBack),
}

impl Change {
    /// Whether it may make a function that has no record yet.
    pub fn creates(&self) -> bool {
        matches!(self, Change::Deploy { .. })
    }

    /// Applies it to `record` at `now_ms`.
    pub fn apply(
        &self,
        record: &mut FunctionRecord,
        now_ms: u64,
    ) -> Result<Changed, RegistryError> {
        match self {
            Change::Deploy {
                content_id,
                spec,
                promote,
            } => record
                .deploy(content_id.clone(), spec.as_ref().clone(), *promote, now_ms)
                .map(Changed::Deployed),
            Change::Traffic(shares) => record.set_traffic(shares).map(|()| Changed::Traffic),
            Change::Rollback(to) => record.rollback(*to, now_ms).map(Changed::RolledBack),
        }
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
}

/// One run of a scheduled function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The tick it ran for (Unix milliseconds).
    pub tick_ms: u64,
    /// The HTTP status it answered (a gateway's own for a failure to reach it).
    pub status: u16,
}

/// A function's schedule: the last tick claimed and what its runs did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    /// The last tick claimed (Unix milliseconds).
    pub claimed_ms: u64,
    /// The last run recorded.
    pub last: Option<RunRecord>,
    /// Runs recorded.
    pub count: u64,
    /// Of those, runs that did not answer 2xx.
    pub failed: u64,
}

impl Runs {
    /// Claims tick `tick_ms`: whether no tick as late was claimed before.
    pub fn claim(&mut self, tick_ms: u64) -> bool {
        let won = self.claimed_ms < tick_ms;
        if won {
            self.claimed_ms = tick_ms;
        }
        won
    }

    /// Counts `run`.
    pub fn record(&mut self, run: RunRecord) {
        self.count += 1;
        if !(200..300).contains(&run.status) {
            self.failed += 1;
        }
        if self.last.is_none_or(|l| l.tick_ms <= run.tick_ms) {
            self.last = Some(run);
        }
    }
}

/// Function name → its record (JSON).
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// Content id → module bytes.
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Function name → its schedule runs (JSON).
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");

/// The embedded registry: one redb file.
pub struct Embedded {
    db: Arc<Database>,
}

impl Embedded {
    /// Opens (or creates) the registry in `file`.
    pub fn open(file: &Path) -> anyhow::Result<Embedded> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        }
        let db = Database::create(file)
            .map_err(|e| anyhow::anyhow!("opening the registry {}: {e}", file.display()))?;
        // The tables exist from the start, so reads never meet a missing one.
        let tx = db.begin_write()?;
        tx.open_table(FUNCTIONS)?;
        tx.open_table(MODULES)?;
        tx.open_table(RUNS)?;
        tx.commit()?;
        Ok(Embedded { db: Arc::new(db) })
    }

    /// Runs `f` with the database on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(RegistryError::of)?
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Embedded {
    /// Changes function `name` with `change` (a new record if `create`, else `NotFound`
    /// when missing) and stores `module` if given, in one durable write transaction.
    async fn update<T: Send + 'static>(
        &self,
        name: &str,
        create: bool,
        module: Option<Bytes>,
        change: impl FnOnce(&mut FunctionRecord) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<(T, FunctionRecord), RegistryError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(RegistryError::of)?;
            let (made, record) = {
                let mut functions = tx.open_table(FUNCTIONS).map_err(RegistryError::of)?;
                let mut record = match functions.get(name.as_str()).map_err(RegistryError::of)? {
                    Some(json) => {
                        serde_json::from_slice(json.value()).map_err(RegistryError::of)?
                    }
                    None if create => FunctionRecord::new(&name),
                    None => return Err(RegistryError::NotFound(format!("no function {name:?}"))),
                };
                let before = record.clone();
                let made = change(&mut record)?;
                if record == before {
                    return Ok((made, record));
                }
                record.generation += 1;
                let json = serde_json::to_vec(&record).map_err(RegistryError::of)?;
                functions
                    .insert(name.as_str(), json.as_slice())
                    .map_err(RegistryError::of)?;
                if let Some(module) = module {
                    let content_id = ContentId::of(&module);
                    let mut modules = tx.open_table(MODULES).map_err(RegistryError::of)?;
                    if modules
                        .get(content_id.as_str())
                        .map_err(RegistryError::of)?
                        .is_none()
                    {
                        modules
                            .insert(content_id.as_str(), module.as_ref())
                            .map_err(RegistryError::of)?;
                    }
                }
                (made, record)
            };
            // Durable once this returns (redb's default durability syncs the file).
            tx.commit().map_err(RegistryError::of)?;
            Ok((made, record))
        })
        .await
    }
}

#[async_trait::async_trait]
impl Registry for Embedded {
    async fn change(
        &self,
        name: &str,
        change: Change,
        module: Option<Bytes>,
    ) -> Result<(Changed, FunctionRecord), RegistryError> {
        let create = change.creates();
        self.update(name, create, module, move |record| {
            change.apply(record, now_ms())
        })
        .await
    }

    async fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(RegistryError::of)?;
            let table = tx.open_table(FUNCTIONS).map_err(RegistryError::of)?;
            let mut records = Vec::new();
            for entry in table.iter().map_err(RegistryError::of)? {
                let (_, json) = entry.map_err(RegistryError::of)?;
                records.push(serde_json::from_slice(json.value()).map_err(RegistryError::of)?);
            }
            Ok(records)
        })
        .await
    }

    async fn module(&self, content_id: &ContentId) -> Result<Option<Bytes>, RegistryError> {
        let key = content_id.as_str().to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(RegistryError::of)?;
            let table = tx.open_table(MODULES).map_err(RegistryError::of)?;
            let module = table.get(key.as_str()).map_err(RegistryError::of)?;
            Ok(module.map(|m| Bytes::copy_from_slice(m.value())))
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(RegistryError::of)?;
            let removed = tx
                .open_table(FUNCTIONS)
                .map_err(RegistryError::of)?
                .remove(name.as_str())
                .map_err(RegistryError::of)?
                .is_some();
            tx.open_table(RUNS)
                .map_err(RegistryError::of)?
                .remove(name.as_str())
                .map_err(RegistryError::of)?;
            tx.commit().map_err(RegistryError::of)?;
            Ok(removed)
        })
        .await
    }

    /// The embedded registry has one gateway (redb holds the file locked): it always
    /// holds the lease.
    async fn lease(&self, _holder: &str, _ttl: std::time::Duration) -> Result<bool, RegistryError> {
        Ok(true)
    }

    async fn claim_tick(&self, name: &str, tick_ms: u64) -> Result<bool, RegistryError> {
        self.change_runs(name, move |runs| runs.claim(tick_ms))
            .await
    }

    async fn record_run(&self, name: &str, run: RunRecord) -> Result<(), RegistryError> {
        self.change_runs(name, move |runs| runs.record(run)).await
    }

    async fn runs(&self) -> Result<BTreeMap<String, Runs>, RegistryError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(RegistryError::of)?;
            let table = tx.open_table(RUNS).map_err(RegistryError::of)?;
            let mut all = BTreeMap::new();
            for entry in table.iter().map_err(RegistryError::of)? {
                let (name, json) = entry.map_err(RegistryError::of)?;
                let runs = serde_json::from_slice(json.value()).map_err(RegistryError::of)?;
                all.insert(name.value().to_string(), runs);
            }
            Ok(all)
        })
        .await
    }
}

impl Embedded {
    /// Changes `name`'s runs with `change` in one write transaction.
    async fn change_runs<T: Send + 'static>(
        &self,
        name: &str,
        change: impl FnOnce(&mut Runs) -> T + Send + 'static,
    ) -> Result<T, RegistryError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(RegistryError::of)?;
            let made = {
                let mut table = tx.open_table(RUNS).map_err(RegistryError::of)?;
                let mut runs: Runs = match table.get(name.as_str()).map_err(RegistryError::of)? {
                    Some(json) => {
                        serde_json::from_slice(json.value()).map_err(RegistryError::of)?
                    }
                    None => Runs::default(),
                };
                let made = change(&mut runs);
                let json = serde_json::to_vec(&runs).map_err(RegistryError::of)?;
                table
                    .insert(name.as_str(), json.as_slice())
                    .map_err(RegistryError::of)?;
                made
            };
            tx.commit().map_err(RegistryError::of)?;
            Ok(made)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(version: u64, percent: u8) -> Share {
        Share { version, percent }
    }

    #[tokio::test]
    async fn versions_grow_only_on_change_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/registry.redb");
        let registry = Embedded::open(&file).unwrap();
        let spec = FunctionSpec::default();
        let one = Bytes::from_static(b"\0asm one");
        let two = Bytes::from_static(b"\0asm two");
        let deploy = async |module: &Bytes, spec: &FunctionSpec| {
            let (deployed, _) = registry
                .deploy("greet", spec.clone(), module.clone(), true)
                .await
                .unwrap();
            (deployed.version, deployed.created)
        };
        assert_eq!(deploy(&one, &spec).await, (1, true));
        assert_eq!(deploy(&one, &spec).await, (1, false));
        assert_eq!(deploy(&two, &spec).await, (2, true));
        let with_env = FunctionSpec {
            env: [("K".to_string(), "V".to_string())].into(),
            ..spec.clone()
        };
        assert_eq!(deploy(&two, &with_env).await, (3, true));
        // Back to the first module: a new version, not the old one's number.
        assert_eq!(deploy(&one, &spec).await, (4, true));
        drop(registry);

        let registry = Embedded::open(&file).unwrap();
        let records = registry.functions().await.unwrap();
        assert_eq!(records.len(), 1);
        let greet = &records[0];
        assert_eq!(greet.versions.len(), 4);
        let serving = greet.serving_all().unwrap();
        assert_eq!(
            (serving.number, &serving.content_id),
            (4, &ContentId::of(&one))
        );
        assert_eq!(
            registry.module(&ContentId::of(&two)).await.unwrap(),
            Some(two)
        );
        // Rollbacks step back through what served: 4 then 3 served last.
        let (back, _) = registry.rollback("greet", None).await.unwrap();
        assert_eq!(
            back,
            RolledBack {
                version: 5,
                restores: 3
            }
        );
        let (back, _) = registry.rollback("greet", None).await.unwrap();
        assert_eq!(
            back,
            RolledBack {
                version: 6,
                restores: 2
            }
        );
        let (named, record) = registry.rollback("greet", Some(4)).await.unwrap();
        assert_eq!(
            named,
            RolledBack {
                version: 7,
                restores: 4
            }
        );
        let serving = record.serving_all().unwrap();
        assert_eq!(
            (serving.content_id.clone(), serving.restores),
            (ContentId::of(&one), Some(4))
        );
        assert_eq!(registry.functions().await.unwrap(), vec![record]);
        assert!(matches!(
            registry.rollback("greet", Some(99)).await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            registry.rollback("nobody", None).await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(registry.delete("greet").await.unwrap());
        assert!(!registry.delete("greet").await.unwrap());
        assert!(registry.functions().await.unwrap().is_empty());
    }

    #[test]
    fn a_split_keeps_two_versions_and_a_rollback_goes_to_the_last_that_served_all() {
        let mut record = FunctionRecord::new("greet");
        let spec = FunctionSpec::default();
        let id = |n: u8| ContentId::of(&[n]);
        record.deploy(id(1), spec.clone(), true, 0).unwrap();
        record.deploy(id(2), spec.clone(), true, 0).unwrap();
        // A version beside it at 0%, then a canary at 10%.
        let canary = record.deploy(id(3), spec.clone(), false, 0).unwrap();
        assert_eq!(canary.version, 3);
        assert_eq!(record.traffic, vec![share(2, 100), share(3, 0)]);
        record.set_traffic(&[share(3, 10), share(2, 90)]).unwrap();
        assert_eq!(record.primary().unwrap().number, 2);
        assert!(record.serving_all().is_none());
        // Another deploy beside a split is refused, as is a bad split; nothing changes.
        let before = record.clone();
        assert!(matches!(
            record.deploy(id(4), spec.clone(), false, 0),
            Err(RegistryError::Conflict(_))
        ));
        for bad in [
            vec![share(3, 10), share(2, 80)],
            vec![share(3, 50), share(3, 50)],
            vec![share(1, 40), share(2, 30), share(3, 30)],
            vec![],
        ] {
            assert!(
                matches!(record.set_traffic(&bad), Err(RegistryError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            record.set_traffic(&[share(9, 100)]),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(record, before);
        // Rolling back from the split goes to 2, the last to serve all traffic.
        let back = record.rollback(None, 0).unwrap();
        assert_eq!(back.restores, 2);
        assert_eq!(record.traffic, vec![share(back.version, 100)]);
        // Promoting the canary to 100% makes it history: the next rollback leaves it.
        record.set_traffic(&[share(3, 100)]).unwrap();
        assert_eq!(record.rollback(None, 0).unwrap().restores, back.version);
    }

    #[test]
    fn a_registry_another_process_holds_open_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.redb");
        let _held = Embedded::open(&file).unwrap();
        let err = Embedded::open(&file).err().unwrap().to_string();
        assert!(err.contains("registry.redb"), "{err}");
    }
}
