//! The registry: every function's versions and modules, durable, behind one trait. The
//! embedded backend (the default) is a redb database in the gateway's state folder.
//!
//! A version is immutable: a number per function (1, 2, ...), the module's content id,
//! and what the deploy said besides the module (routes, env, limits). Deploying the
//! same module and spec as the version serving returns that version. A deploy is
//! acknowledged only once its write transaction has committed, durably: a gateway
//! killed during a deploy comes back with the old version or the new, never a part.
//!
//! A rollback is a deploy too: a new version with the module and settings of an earlier
//! one, serving at once, in one transaction. Without a version named, it goes to the
//! version that served before the one serving; each function keeps the history of the
//! versions that served, and a rollback steps back through it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use edge_shared::manifest::{ContentId, Limits, Route};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// What a deploy says besides the module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// How users reach it; none means the defaults (`/NAME`, `NAME.<domain>`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Environment variables beside the CGI ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
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

/// A function: its versions and the one serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<Version>,
    /// The number of the version serving.
    pub serving: u64,
    /// The versions that served, oldest first, the one serving last: a deploy adds
    /// its version, a rollback to the previous steps back.
    #[serde(default)]
    pub history: Vec<u64>,
}

impl FunctionRecord {
    /// The version serving.
    pub fn serving(&self) -> Option<&Version> {
        self.version(self.serving)
    }

    /// Version `number`.
    pub fn version(&self, number: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// The version a rollback goes to: `to`, or the one that served before the one
    /// serving.
    pub fn rollback_target(&self, to: Option<u64>) -> Result<&Version, RegistryError> {
        let number = match to {
            Some(n) => n,
            None => match self.history.len() {
                2.. => self.history[self.history.len() - 2],
                _ => {
                    return Err(RegistryError::Conflict(format!(
                        "function {:?} has no earlier version that served",
                        self.name
                    )));
                }
            },
        };
        self.version(number).ok_or_else(|| {
            RegistryError::NotFound(format!("function {:?} has no version {number}", self.name))
        })
    }
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
    /// The call does not fit the function's state (the message says why).
    #[error("{0}")]
    Conflict(String),
    /// It could not be read or written.
    #[error("registry: {0}")]
    Storage(String),
}

impl RegistryError {
    fn of(e: impl std::fmt::Display) -> RegistryError {
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

/// Where functions and their versions are kept.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Makes `module` with `spec` the version serving `name` (a new version unless it
    /// is already), durably. The caller has checked both.
    async fn deploy(
        &self,
        name: &str,
        spec: FunctionSpec,
        module: Bytes,
    ) -> Result<Deployed, RegistryError>;

    /// Every function, by name.
    async fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError>;

    /// The module with this content id.
    async fn module(&self, content_id: &ContentId) -> Result<Option<Bytes>, RegistryError>;

    /// Removes `name` and its versions; whether it was there.
    async fn delete(&self, name: &str) -> Result<bool, RegistryError>;

    /// Makes a new version of `name` with the module and settings of version `to`, or
    /// of the one that served before the one serving ([`FunctionRecord::rollback_target`]),
    /// serving at once.
    async fn rollback(&self, name: &str, to: Option<u64>) -> Result<RolledBack, RegistryError>;
}

/// Function name → its record (JSON).
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// Content id → module bytes.
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");

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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl Registry for Embedded {
    async fn deploy(
        &self,
        name: &str,
        spec: FunctionSpec,
        module: Bytes,
    ) -> Result<Deployed, RegistryError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let content_id = ContentId::of(&module);
            let tx = db.begin_write().map_err(RegistryError::of)?;
            let deployed = {
                let mut functions = tx.open_table(FUNCTIONS).map_err(RegistryError::of)?;
                let mut record = match functions.get(name.as_str()).map_err(RegistryError::of)? {
                    Some(json) => {
                        serde_json::from_slice(json.value()).map_err(RegistryError::of)?
                    }
                    None => FunctionRecord {
                        name: name.clone(),
                        versions: Vec::new(),
                        serving: 0,
                        history: Vec::new(),
                    },
                };
                if let Some(serving) = record.serving()
                    && serving.content_id == content_id
                    && serving.spec == spec
                {
                    return Ok(Deployed {
                        version: serving.number,
                        created: false,
                    });
                }
                let number = record.versions.last().map_or(1, |v| v.number + 1);
                record.versions.push(Version {
                    number,
                    content_id: content_id.clone(),
                    spec,
                    created_ms: now_ms(),
                    restores: None,
                });
                record.serving = number;
                record.history.push(number);
                let json = serde_json::to_vec(&record).map_err(RegistryError::of)?;
                functions
                    .insert(name.as_str(), json.as_slice())
                    .map_err(RegistryError::of)?;
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
                Deployed {
                    version: number,
                    created: true,
                }
            };
            // Durable once this returns (redb's default durability syncs the file).
            tx.commit().map_err(RegistryError::of)?;
            Ok(deployed)
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

    async fn rollback(&self, name: &str, to: Option<u64>) -> Result<RolledBack, RegistryError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(RegistryError::of)?;
            let rolled = {
                let mut functions = tx.open_table(FUNCTIONS).map_err(RegistryError::of)?;
                let mut record: FunctionRecord =
                    match functions.get(name.as_str()).map_err(RegistryError::of)? {
                        Some(json) => {
                            serde_json::from_slice(json.value()).map_err(RegistryError::of)?
                        }
                        None => {
                            return Err(RegistryError::NotFound(format!("no function {name:?}")));
                        }
                    };
                let target = record.rollback_target(to)?.clone();
                let number = record.versions.last().map_or(1, |v| v.number + 1);
                record.versions.push(Version {
                    number,
                    created_ms: now_ms(),
                    restores: Some(target.number),
                    ..target.clone()
                });
                if to.is_none() {
                    // Back past the one serving and the one it restores.
                    record.history.truncate(record.history.len() - 2);
                }
                record.history.push(number);
                record.serving = number;
                let json = serde_json::to_vec(&record).map_err(RegistryError::of)?;
                functions
                    .insert(name.as_str(), json.as_slice())
                    .map_err(RegistryError::of)?;
                RolledBack {
                    version: number,
                    restores: target.number,
                }
            };
            tx.commit().map_err(RegistryError::of)?;
            Ok(rolled)
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
            tx.commit().map_err(RegistryError::of)?;
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_grow_only_on_change_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/registry.redb");
        let registry = Embedded::open(&file).unwrap();
        let spec = FunctionSpec::default();
        let one = Bytes::from_static(b"\0asm one");
        let two = Bytes::from_static(b"\0asm two");
        let deploy = |module: &Bytes, spec: &FunctionSpec| {
            registry.deploy("greet", spec.clone(), module.clone())
        };
        assert_eq!(
            deploy(&one, &spec).await.unwrap(),
            Deployed {
                version: 1,
                created: true
            }
        );
        assert_eq!(
            deploy(&one, &spec).await.unwrap(),
            Deployed {
                version: 1,
                created: false
            }
        );
        assert_eq!(
            deploy(&two, &spec).await.unwrap(),
            Deployed {
                version: 2,
                created: true
            }
        );
        let with_env = FunctionSpec {
            env: [("K".to_string(), "V".to_string())].into(),
            ..spec.clone()
        };
        assert_eq!(deploy(&two, &with_env).await.unwrap().version, 3);
        // Back to the first module: a new version, not the old one's number.
        assert_eq!(deploy(&one, &spec).await.unwrap().version, 4);
        drop(registry);

        let registry = Embedded::open(&file).unwrap();
        let records = registry.functions().await.unwrap();
        assert_eq!(records.len(), 1);
        let greet = &records[0];
        assert_eq!(greet.versions.len(), 4);
        let serving = greet.serving().unwrap();
        assert_eq!(
            (serving.number, &serving.content_id),
            (4, &ContentId::of(&one))
        );
        assert_eq!(
            registry.module(&ContentId::of(&two)).await.unwrap(),
            Some(two)
        );
        // Rollbacks step back through what served: 4 then 3 served last.
        let back = registry.rollback("greet", None).await.unwrap();
        assert_eq!(
            back,
            RolledBack {
                version: 5,
                restores: 3
            }
        );
        let back = registry.rollback("greet", None).await.unwrap();
        assert_eq!(
            back,
            RolledBack {
                version: 6,
                restores: 2
            }
        );
        let named = registry.rollback("greet", Some(4)).await.unwrap();
        assert_eq!(
            named,
            RolledBack {
                version: 7,
                restores: 4
            }
        );
        let records = registry.functions().await.unwrap();
        let serving = records[0].serving().unwrap();
        assert_eq!(
            (serving.content_id.clone(), serving.restores),
            (ContentId::of(&one), Some(4))
        );
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
    fn a_registry_another_process_holds_open_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.redb");
        let _held = Embedded::open(&file).unwrap();
        let err = Embedded::open(&file).err().unwrap().to_string();
        assert!(err.contains("registry.redb"), "{err}");
    }
}
