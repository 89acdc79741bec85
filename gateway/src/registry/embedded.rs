//! The embedded registry: one redb database in the gateway's state folder, each change
//! one durable write transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use edge_shared::manifest::ContentId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, Changed, FunctionRecord, Registry, RegistryError, RunRecord, Runs, now_ms};

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
    use crate::registry::{FunctionSpec, RolledBack};

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
    fn a_registry_another_process_holds_open_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.redb");
        let _held = Embedded::open(&file).unwrap();
        let err = Embedded::open(&file).err().unwrap().to_string();
        assert!(err.contains("registry.redb"), "{err}");
    }
}
