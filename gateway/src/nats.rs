//! The shared registry: NATS JetStream, for several gateways. One key-value bucket,
//! `PREFIX-functions`, holds each function's record under `fn.NAME` (with a change
//! written by compare-and-set on the key's revision, two gateways deploying at once
//! cannot both make version 7: the second re-reads and makes version 8), each
//! schedule's runs under `runs.NAME`, and the scheduler lease under `lease.scheduler`.
//! An object store, `PREFIX-modules`, holds modules by content id, checked against it
//! when read. A module is stored before the record naming it, so no gateway sees a
//! version whose module is missing.
//!
//! The connection is mutual TLS by default: the server's certificate chains to the
//! cluster CA, and the gateway presents its member certificate, which nats-server
//! checks (`--tlsverify`) for the CA and the client usage, so neither a node's key nor
//! the public one reaches the registry.
//!
//! Every gateway watches `fn.*` ([`watch`]) and serves each change as it arrives: a
//! deploy at one gateway is served by all. Checked against Debian's nats-server 2.9.10
//! with async-nats 0.40 built without its `server_2_10` and `server_2_11` features
//! (STACK.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use edge_net::lifecycle::Shutdown;
use edge_shared::config::GatewayConfig;
use edge_shared::manifest::ContentId;
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;

use crate::functions::Functions;
use crate::proxy::Gateway;
use crate::registry::{
    Change, Changed, FunctionRecord, Registry, RegistryError, RunRecord, Runs, now_ms,
};

/// How many times a change is tried again after another gateway's won the race.
const RACES: usize = 32;
/// The lease's key.
const LEASE_KEY: &str = "lease.scheduler";

/// The shared registry.
pub struct Shared {
    kv: kv::Store,
    modules: object_store::ObjectStore,
    timeout: Duration,
}

/// Who holds the scheduler lease, until when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

fn of(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(format!("nats: {e}"))
}

fn function_key(name: &str) -> String {
    format!("fn.{name}")
}

fn runs_key(name: &str) -> String {
    format!("runs.{name}")
}

impl Shared {
    /// Connects to `registry.nats_url` (mutual TLS with the cluster's CA and the
    /// gateway's member certificate, unless `registry.tls` is off) and opens (or
    /// creates) the buckets.
    pub async fn connect(gateway: &GatewayConfig) -> anyhow::Result<Shared> {
        let config = &gateway.registry;
        let timeout = Duration::from_millis(config.timeout_ms);
        let url = &config.nats_url;
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout));
        if config.tls {
            let member = edge_net::tls::Identity {
                cert: &gateway.cluster_cert,
                key: &gateway.cluster_key,
            };
            let tls = edge_net::tls::client_config(&gateway.cluster_ca, Some(member), &[])?;
            options = options.tls_client_config(tls).require_tls(true);
        }
        let client = options
            .connect(url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("registry.nats_url {url}: {e}"))?;
        let js = jetstream::new(client);
        let bucket = format!("{}-functions", config.bucket);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "edge: functions, versions, traffic, schedule runs".into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    anyhow::anyhow!("creating the JetStream bucket {bucket} at {url}: {e}")
                })?,
        };
        let bucket = format!("{}-modules", config.bucket);
        let modules = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("edge: modules by content id".into()),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    anyhow::anyhow!("creating the JetStream object store {bucket} at {url}: {e}")
                })?,
        };
        Ok(Shared {
            kv,
            modules,
            timeout,
        })
    }

    /// `call`, failing after the configured timeout.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                RegistryError::Storage(format!("nats: no answer within {:?}", self.timeout))
            })?
    }

    /// The names of the keys that start with `prefix` (the prefix taken off).
    ///
    /// Listing a bucket's keys can stall until it gives up when a key is written
    /// meanwhile (nats-server 2.9, nats-server#3481; schedules write their runs every
    /// tick), where a listing started again a moment later completes. So each try gets a
    /// third of the timeout, and a stalled one is started again, up to three tries.
    async fn names_under(&self, prefix: &str) -> Result<Vec<String>, RegistryError> {
        const TRIES: u32 = 3;
        for _ in 0..TRIES {
            let listing = async {
                let mut keys = self.kv.keys().await.map_err(of)?;
                let mut names = Vec::new();
                while let Some(key) = keys.next().await {
                    let key = key.map_err(of)?;
                    if let Some(name) = key.strip_prefix(prefix) {
                        names.push(name.to_string());
                    }
                }
                Ok(names)
            };
            if let Ok(listed) = tokio::time::timeout(self.timeout / TRIES, listing).await {
                return listed;
            }
        }
        Err(RegistryError::Storage(format!(
            "nats: listing the keys stalled {TRIES} times within {:?}",
            self.timeout
        )))
    }

    /// The value under `key` and its revision (0: none).
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<(Option<T>, u64), RegistryError> {
        match self.kv.entry(key).await.map_err(of)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&entry.value).map_err(of)?;
                Ok((Some(value), entry.revision))
            }
            Some(entry) => Ok((None, entry.revision)),
            None => Ok((None, 0)),
        }
    }

    /// Writes `value` under `key` if its revision is still `revision` (0: if it has no
    /// value); whether it was.
    async fn write_if(
        &self,
        key: &str,
        value: &impl serde::Serialize,
        revision: u64,
        existed: bool,
    ) -> Result<bool, RegistryError> {
        let json = Bytes::from(serde_json::to_vec(value).map_err(of)?);
        let written = if existed {
            self.kv
                .update(key, json, revision)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(of(e)),
                })
        } else {
            self.kv
                .create(key, json)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    // Another gateway created it first (or re-created it after a delete).
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(of(e)),
                })
        };
        match written {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Changes function `name` with `change` by compare-and-set, again on a lost race
    /// (a new record if `create`, else `NotFound` when missing); `module` is stored
    /// first.
    async fn update<T>(
        &self,
        name: &str,
        create: bool,
        module: Option<Bytes>,
        change: impl Fn(&mut FunctionRecord) -> Result<T, RegistryError>,
    ) -> Result<(T, FunctionRecord), RegistryError> {
        if let Some(module) = module {
            self.timed(self.store_module(module)).await?;
        }
        let key = function_key(name);
        for _ in 0..RACES {
            let (record, revision) = self.timed(self.read::<FunctionRecord>(&key)).await?;
            let existed = record.is_some();
            let mut record = match record {
                Some(record) => record,
                None if create => FunctionRecord::new(name),
                None => return Err(RegistryError::NotFound(format!("no function {name:?}"))),
            };
            let before = record.clone();
            let made = change(&mut record)?;
            if record == before {
                return Ok((made, record));
            }
            record.generation += 1;
            if self
                .timed(self.write_if(&key, &record, revision, existed))
                .await?
            {
                return Ok((made, record));
            }
        }
        Err(RegistryError::Storage(format!(
            "function {name:?}: {RACES} other changes won the race; try again"
        )))
    }

    /// Changes `name`'s runs with `change` by compare-and-set.
    async fn change_runs<T>(
        &self,
        name: &str,
        change: impl Fn(&mut Runs) -> T,
    ) -> Result<T, RegistryError> {
        let key = runs_key(name);
        for _ in 0..RACES {
            let (runs, revision) = self.timed(self.read::<Runs>(&key)).await?;
            let existed = runs.is_some();
            let mut runs = runs.unwrap_or_default();
            let made = change(&mut runs);
            if self
                .timed(self.write_if(&key, &runs, revision, existed))
                .await?
            {
                return Ok(made);
            }
        }
        Err(RegistryError::Storage(format!(
            "runs of {name:?}: {RACES} other changes won the race"
        )))
    }

    async fn store_module(&self, module: Bytes) -> Result<(), RegistryError> {
        let content_id = ContentId::of(&module);
        if self.modules.info(content_id.as_str()).await.is_ok() {
            return Ok(());
        }
        self.modules
            .put(content_id.as_str(), &mut module.as_ref())
            .await
            .map_err(of)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for Shared {
    async fn change(
        &self,
        name: &str,
        change: Change,
        module: Option<Bytes>,
    ) -> Result<(Changed, FunctionRecord), RegistryError> {
        self.update(name, change.creates(), module, |record| {
            change.apply(record, now_ms())
        })
        .await
    }

    async fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        let mut names = self.names_under("fn.").await?;
        names.sort();
        self.timed(async {
            let mut records = Vec::new();
            for name in names {
                if let (Some(record), _) = self.read::<FunctionRecord>(&function_key(&name)).await?
                {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn function(&self, name: &str) -> Result<Option<FunctionRecord>, RegistryError> {
        let (record, _) = self.timed(self.read(&function_key(name))).await?;
        Ok(record)
    }

    async fn module(&self, content_id: &ContentId) -> Result<Option<Bytes>, RegistryError> {
        self.timed(async {
            let mut object = match self.modules.get(content_id.as_str()).await {
                Ok(object) => object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(of(e)),
            };
            let mut module = Vec::new();
            object.read_to_end(&mut module).await.map_err(of)?;
            if ContentId::of(&module) != *content_id {
                return Err(RegistryError::Storage(format!(
                    "nats: module {} does not match its content id",
                    content_id.as_str()
                )));
            }
            Ok(Some(Bytes::from(module)))
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        self.timed(async {
            let (record, _) = self.read::<FunctionRecord>(&function_key(name)).await?;
            if record.is_none() {
                return Ok(false);
            }
            self.kv.delete(function_key(name)).await.map_err(of)?;
            self.kv.delete(runs_key(name)).await.map_err(of)?;
            Ok(true)
        })
        .await
    }

    async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, RegistryError> {
        let (lease, revision) = self.timed(self.read::<Lease>(LEASE_KEY)).await?;
        let now = now_ms();
        let existed = lease.is_some();
        let half = ttl.as_millis() as u64 / 2;
        match &lease {
            Some(lease) if lease.holder != holder && lease.until_ms > now => return Ok(false),
            // Held, with more than half its time left: no need to write yet.
            Some(lease) if lease.holder == holder && lease.until_ms > now + half => {
                return Ok(true);
            }
            _ => {}
        }
        let renewed = Lease {
            holder: holder.to_string(),
            until_ms: now + ttl.as_millis() as u64,
        };
        self.timed(self.write_if(LEASE_KEY, &renewed, revision, existed))
            .await
    }

    async fn claim_tick(&self, name: &str, tick_ms: u64) -> Result<bool, RegistryError> {
        self.change_runs(name, |runs| runs.claim(tick_ms)).await
    }

    async fn record_run(&self, name: &str, run: RunRecord) -> Result<(), RegistryError> {
        self.change_runs(name, |runs| runs.record(run)).await
    }

    /// One key read, not a listing: listing the bucket's keys can wait out the whole
    /// timeout when a key is written meanwhile (nats-server 2.9, nats-server#3481), and
    /// a schedule writes its runs every tick.
    async fn runs_of(&self, name: &str) -> Result<Runs, RegistryError> {
        let (runs, _) = self.timed(self.read::<Runs>(&runs_key(name))).await?;
        Ok(runs.unwrap_or_default())
    }

    async fn runs(&self) -> Result<BTreeMap<String, Runs>, RegistryError> {
        let names = self.names_under("runs.").await?;
        self.timed(async {
            let mut all = BTreeMap::new();
            for name in names {
                if let (Some(runs), _) = self.read::<Runs>(&runs_key(&name)).await? {
                    all.insert(name, runs);
                }
            }
            Ok(all)
        })
        .await
    }
}

/// Changes to functions as other gateways (and this one) write them.
pub struct Changes(kv::Watch);

impl Shared {
    /// Starts watching functions' records: every change from now on.
    pub async fn changes(&self) -> anyhow::Result<Changes> {
        let watch = self
            .kv
            .watch("fn.*")
            .await
            .map_err(|e| anyhow::anyhow!("watching the registry: {e}"))?;
        Ok(Changes(watch))
    }
}

/// Serves each change to a function's record as it arrives, until `stop`: a record
/// newer than the one served is loaded (its new versions placed on their home nodes
/// first), a deleted one stops being served. Every `registry.resync_ms`, and whenever
/// the watch has to be started again, every record is read and served the same way, so
/// a change the watch missed (or could not serve when it came) is served late rather
/// than never.
pub async fn watch(
    changes: Changes,
    gateway: Arc<Gateway>,
    registry: Arc<Shared>,
    config: GatewayConfig,
    stop: Shutdown,
) {
    let stopped = stop.fired();
    tokio::pin!(stopped);
    let mut changes = Some(changes);
    let every = Duration::from_millis(config.registry.resync_ms);
    let mut resync = tokio::time::interval(every);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let entry = tokio::select! {
            entry = next_change(&mut changes) => entry,
            _ = resync.tick() => {
                if changes.is_none() {
                    changes = registry.changes().await.ok();
                }
                resync_all(&gateway, &registry, &config).await;
                continue;
            }
            () = &mut stopped => return,
        };
        match entry {
            Some(Ok(entry)) => {
                let Some(name) = entry.key.strip_prefix("fn.") else {
                    continue;
                };
                let _changing = gateway.changing.lock().await;
                if entry.operation != kv::Operation::Put {
                    serve_removal(&gateway, name);
                    continue;
                }
                match serde_json::from_slice::<FunctionRecord>(&entry.value) {
                    Ok(record) => serve_record(&gateway, &*registry, &config, &record).await,
                    Err(e) => {
                        tracing::warn!(function = name, error = %e, "registry watch: a record does not parse");
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "registry watch: a change could not be read");
            }
            None => {
                tracing::warn!("registry watch ended: watching again, and reading every record");
                tokio::time::sleep(Duration::from_secs(1)).await;
                changes = match registry.changes().await {
                    Ok(changes) => Some(changes),
                    Err(e) => {
                        tracing::error!(error = %e, "registry watch could not start again; retrying every {every:?}");
                        None
                    }
                };
                resync_all(&gateway, &registry, &config).await;
            }
        }
    }
}

/// The next change, or never when there is no watch.
async fn next_change(changes: &mut Option<Changes>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match changes {
        Some(changes) => changes.0.next().await,
        None => std::future::pending().await,
    }
}

/// Serves every record in the registry that is newer than the one served, and stops
/// serving functions it no longer has. Holds the gateway's change lock throughout, so a
/// deploy made here meanwhile is not mistaken for a function the registry lacks.
async fn resync_all(gateway: &Gateway, registry: &Shared, config: &GatewayConfig) {
    let _changing = gateway.changing.lock().await;
    let records = match registry.functions().await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "registry resync: the records could not be read");
            return;
        }
    };
    for record in &records {
        serve_record(gateway, registry, config, record).await;
    }
    let gone: Vec<String> = gateway
        .functions()
        .list
        .iter()
        .filter(|served| !records.iter().any(|r| r.name == served.name))
        .map(|served| served.name.clone())
        .collect();
    for name in gone {
        serve_removal(gateway, &name);
    }
}

/// Serves `record` if it is newer than the version of its function served here. The
/// caller holds the gateway's change lock.
async fn serve_record(
    gateway: &Gateway,
    registry: &dyn Registry,
    config: &GatewayConfig,
    record: &FunctionRecord,
) {
    let current = gateway.functions();
    let name = &record.name;
    if current
        .named(name)
        .is_some_and(|served| served.generation >= record.generation)
    {
        return;
    }
    match apply(gateway, registry, config, &current, record).await {
        Ok(next) => {
            gateway.serve_functions(next);
            tracing::info!(function = %name, generation = record.generation, "registry change served");
        }
        Err(e) => tracing::warn!(function = %name, error = %e, "registry change not served"),
    }
}

/// Stops serving function `name`, removed from the registry. The caller holds the
/// gateway's change lock.
fn serve_removal(gateway: &Gateway, name: &str) {
    let current = gateway.functions();
    if current.named(name).is_some() {
        gateway.serve_functions(current.without(name));
        tracing::info!(function = name, "removed from the registry");
    }
}

/// `current` with `record` in force, its versions new here placed first.
async fn apply(
    gateway: &Gateway,
    registry: &dyn Registry,
    config: &GatewayConfig,
    current: &Functions,
    record: &FunctionRecord,
) -> Result<Functions, crate::functions::Refusal> {
    let next = current.apply(registry, config, record).await?;
    gateway.place_fresh(current, &next, &record.name).await;
    Ok(next)
}
