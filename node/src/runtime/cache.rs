//! Blob store and compiled-module cache: in memory (least recently used out first, bounded
//! by bytes), and serialized on disk so that a restarted or evicted module deserializes
//! instead of compiling.
//!
//! The cache owns the node's warm state: a deployment is warm while its module is in
//! memory here, and its pool of ready instances lives in that module's entry. Evicting
//! the module drops its pools with it (the worker threads then free their instances),
//! so nothing else has to be kept in step.
//!
//! Layout under the cache folder: `blobs/{content id}.wasm` (the module bytes, verified
//! against their hash), `artifacts/{engine key}/{content id}.bin` (compiled code, sealed),
//! beside it `{content id}.seal` (the signature of the node that compiled it, for other
//! nodes) and `artifact.key`.
//!
//! An artifact is native code that `Module::deserialize` trusts blindly, so each one is
//! sealed when written: an HMAC-SHA256 tag, made with the node's own secret
//! (`artifact.key`, 0600), before its bytes. A tag that does not verify (a file written
//! by anyone but this node) is never deserialized: the artifact is dropped and compiled
//! again.
//!
//! Artifacts travel between nodes ([`crate::peers`]): the node that compiles one signs
//! it with its certificate's key ([`edge_shared::artifact`]), and a node takes one from a
//! peer only once that signature and the bytes' digest check out
//! ([`ModuleCache::keep_fetched`]'s caller); it then seals it as its own. The seal file
//! travels on with it, so the signature is always the compiling node's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use edge_net::gossip::Credentials;
use edge_shared::artifact::ArtifactClaims;
use edge_shared::manifest::{ContentId, DeploymentId};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use wasmer::{Engine, Module};

use super::engine;
use super::invoke::Runnable;
use super::lru::Lru;
use super::memories::MemoryPool;
use super::wasi::Linker;
use crate::pool::InstancePool;

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Already in memory.
    Memory,
    /// Deserialized from the on-disk artifact.
    Disk,
    /// Compiled from the module bytes.
    Compiled,
    /// Taken from another node, then deserialized (the node says so; the cache sees a
    /// load from disk).
    Peer,
}

/// A loaded module and what loading it took.
pub struct Loaded {
    /// Ready to instantiate.
    pub runnable: Runnable,
    /// Where it came from.
    pub source: Source,
    /// Time reading the module bytes from the blob store (zero when not needed).
    pub blob: Duration,
    /// Time compiling or deserializing (zero from memory).
    pub load: Duration,
}

/// Counters of the cache, as the node's status reports them.
#[derive(Debug, Default, Serialize)]
pub struct CacheStats {
    /// Modules compiled from wasm.
    pub compiles: AtomicU64,
    /// Artifacts deserialized from disk.
    pub deserializations: AtomicU64,
    /// Loads answered from memory.
    pub memory_hits: AtomicU64,
    /// Modules evicted from memory.
    pub evictions: AtomicU64,
    /// Artifacts on disk refused for a seal that is not this node's.
    pub refused_artifacts: AtomicU64,
    /// Artifacts taken from other nodes (their signature checked).
    pub fetches: AtomicU64,
    /// Artifacts other nodes offered that failed the check: not loaded.
    pub refused_fetches: AtomicU64,
    /// Artifacts handed to other nodes.
    pub served: AtomicU64,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// wasmer refused to compile it.
    #[error("compile failed: {0}")]
    Compile(String),
    /// Neither the artifact nor the module bytes are on this node.
    #[error("module {0} is not in the blob store")]
    Missing(ContentId),
    /// It imports what the host does not provide.
    #[error("module cannot be linked: {0}")]
    Link(String),
    /// The cache folder could not be written.
    #[error("cache {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The node's artifact-sealing secret at `path`: read, or made (0600) if missing. One
/// that others may read is refused: with it, anyone could seal native code.
fn seal_key(path: &Path) -> Result<[u8; 32], LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&key))
            .map_err(io)?;
    }
    edge_net::tls::check_secret_file(path).map_err(|reason| {
        io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            reason,
        ))
    })?;
    let bytes = std::fs::read(path).map_err(io)?;
    bytes.try_into().map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not 32 bytes: delete it and the artifacts to start afresh",
        ))
    })
}

/// A compiled module's key in memory: its content id and the memory limit its engine
/// enforces.
pub type ModuleKey = (ContentId, u64);

/// A module in memory and the pools of the deployments that run it.
struct Warm {
    module: Module,
    /// The engine `module` was loaded into. Its code lives in the engine, so every
    /// runnable of the module takes this one: a module paired with another engine would
    /// run freed code once the pools holding this one are gone.
    engine: Engine,
    pools: HashMap<DeploymentId, Arc<InstancePool>>,
}

/// Bytes of an artifact's seal.
const SEAL_LEN: usize = 32;

/// The compiled-module cache.
pub struct ModuleCache {
    blobs: PathBuf,
    artifacts: PathBuf,
    /// This host's engine key: its artifacts' folder, and what peers' must match.
    engine: String,
    /// Signs the artifacts this node compiles, for other nodes, with its name; unset
    /// (tests of the runtime alone), they are not shared.
    signer: OnceLock<(Credentials, String)>,
    /// The node's secret that seals its artifacts.
    seal_key: [u8; 32],
    /// The most elements a table of a loaded module may hold.
    max_table_elements: u32,
    /// Where every loaded module's instances get their linear memories.
    memories: Arc<MemoryPool>,
    in_memory: Mutex<Lru<ModuleKey, Warm>>,
    stats: CacheStats,
}

impl ModuleCache {
    /// A cache under `dir`, created if missing, holding up to `memory_budget` bytes of
    /// compiled modules in memory, whose instances' tables hold `max_table_elements` at
    /// most, with linear memories from `memories`. The folder and its subfolders are the
    /// node's alone (0700): what is in them becomes native code in this process.
    pub fn open(
        dir: &Path,
        memory_budget: u64,
        max_table_elements: u32,
        memories: Arc<MemoryPool>,
    ) -> Result<ModuleCache, LoadError> {
        let host = edge_shared::artifact::engine_key(&engine::host_key());
        let cache = ModuleCache {
            blobs: dir.join("blobs"),
            artifacts: dir.join("artifacts").join(&host),
            engine: host,
            signer: OnceLock::new(),
            seal_key: [0; 32],
            max_table_elements,
            memories,
            in_memory: Mutex::new(Lru::new(memory_budget)),
            stats: CacheStats::default(),
        };
        let artifacts = dir.join("artifacts");
        for d in [dir, &cache.blobs, &artifacts, &cache.artifacts] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(d)
                .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)))
                .map_err(|source| LoadError::Io {
                    path: d.to_path_buf(),
                    source,
                })?;
        }
        let seal_key = seal_key(&dir.join("artifact.key"))?;
        Ok(ModuleCache { seal_key, ..cache })
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.seal_key)
            .expect("HMAC takes keys of any length")
    }

    /// `artifact` with its seal in front.
    fn seal(&self, artifact: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(artifact);
        let mut sealed = mac.finalize().into_bytes().to_vec();
        sealed.extend_from_slice(artifact);
        sealed
    }

    /// The artifact inside `sealed`, if its seal is this node's.
    fn unseal<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let (tag, artifact) = sealed.split_at_checked(SEAL_LEN)?;
        let mut mac = self.mac();
        mac.update(artifact);
        mac.verify_slice(tag).ok().map(|()| artifact)
    }

    /// This host's engine key.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Signs each artifact compiled from now on with `credentials`, as node `name`, so
    /// that other nodes may take it.
    pub fn sign_with(&self, credentials: Credentials, name: &str) {
        let _ = self.signer.set((credentials, name.to_string()));
    }

    /// Whether module `id`'s artifact is on disk (every module in memory has one).
    pub fn has_artifact(&self, id: &ContentId) -> bool {
        self.artifact_path(id).is_file()
    }

    /// Module `id`'s artifact as another node takes it: its seal line, `\n`, its bytes.
    /// `None` without both (say, compiled before this node signed its artifacts).
    ///
    /// This node's own seal is not checked here: the taker checks the signature, which
    /// covers the bytes as they were compiled, so a file changed on this disk is
    /// refused there (and here, at its next load).
    pub fn shared_artifact(&self, id: &ContentId) -> Option<Vec<u8>> {
        let seal = std::fs::read(self.seal_path(id)).ok()?;
        let sealed = std::fs::read(self.artifact_path(id)).ok()?;
        let artifact = sealed.get(SEAL_LEN..)?;
        let mut body = Vec::with_capacity(seal.len() + 1 + artifact.len());
        body.extend_from_slice(&seal);
        body.push(b'\n');
        body.extend_from_slice(artifact);
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        Some(body)
    }

    /// Keeps an artifact of module `id` taken from another node, whose `seal` the caller
    /// has checked against these bytes: sealed as this node's own, so [`Self::load`]
    /// deserializes it; its seal kept to hand it on.
    pub fn keep_fetched(
        &self,
        id: &ContentId,
        seal: &str,
        artifact: &[u8],
    ) -> Result<(), LoadError> {
        self.write_once(&self.seal_path(id), seal.as_bytes())?;
        self.write_once(&self.artifact_path(id), &self.seal(artifact))?;
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn artifact_path(&self, id: &ContentId) -> PathBuf {
        self.artifacts.join(format!("{id}.bin"))
    }

    fn seal_path(&self, id: &ContentId) -> PathBuf {
        self.artifacts.join(format!("{id}.seal"))
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The pool the loaded modules' instances take their linear memories from.
    pub fn memories(&self) -> &Arc<MemoryPool> {
        &self.memories
    }

    /// Modules in memory and their artifact bytes.
    pub fn memory_usage(&self) -> (usize, u64) {
        let lru = self.lru();
        (lru.len(), lru.used())
    }

    /// The pool of deployment `id`, whose module is `key`, while that module is in
    /// memory; counts as a use of the module.
    pub fn pool(&self, key: &ModuleKey, id: &DeploymentId) -> Option<Arc<InstancePool>> {
        self.lru().get_mut(key)?.pools.get(id).cloned()
    }

    /// Keeps `pool` as deployment `id`'s while its module `key` stays in memory. False
    /// if the module left memory meanwhile (the pool then serves only its caller).
    pub fn keep_pool(&self, key: &ModuleKey, id: &DeploymentId, pool: &Arc<InstancePool>) -> bool {
        match self.lru().get_mut(key) {
            Some(warm) => {
                warm.pools.insert(id.clone(), Arc::clone(pool));
                true
            }
            None => false,
        }
    }

    /// Forgets deployment `id`'s pool (it was undeployed).
    pub fn drop_pool(&self, key: &ModuleKey, id: &DeploymentId) {
        if let Some(warm) = self.lru().get_mut(key) {
            warm.pools.remove(id);
        }
    }

    /// Every warm deployment and its pool, without marking any module as used.
    pub fn warm(&self) -> Vec<(DeploymentId, Arc<InstancePool>)> {
        let lru = self.lru();
        lru.values()
            .flat_map(|w| w.pools.iter().map(|(id, p)| (id.clone(), Arc::clone(p))))
            .collect()
    }

    /// Drops from memory every module whose deployments have all gone without a request
    /// for `ttl` (scale to zero of the compiled code: its next request deserializes the
    /// artifact from disk, a few milliseconds). A module without a deployment's pool is
    /// left to the LRU. Returns the content ids dropped.
    pub fn evict_idle(&self, ttl: Duration) -> Vec<ContentId> {
        let gone = self.lru().remove_where(|warm| {
            !warm.pools.is_empty() && warm.pools.values().all(|p| p.idle_for() >= ttl)
        });
        self.stats
            .evictions
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone.into_iter().map(|(id, _)| id).collect()
    }

    /// Keeps module bytes `wasm` (whose hash is `id`) in the blob store.
    pub fn store_blob(&self, id: &ContentId, wasm: &[u8]) -> Result<(), LoadError> {
        self.write_once(&self.blob_path(id), wasm)
    }

    /// Module `id`'s bytes from the blob store, if held and still matching their hash
    /// (a blob that does not is dropped).
    pub fn blob(&self, id: &ContentId) -> Option<Vec<u8>> {
        let path = self.blob_path(id);
        let wasm = std::fs::read(&path).ok()?;
        if ContentId::of(&wasm) == *id {
            return Some(wasm);
        }
        tracing::warn!(path = %path.display(), "blob does not match its content id, dropping it");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// A runnable for module `id` under a memory limit: from memory, else from the disk
    /// artifact, else compiled from the blob store (and the artifact written to disk).
    /// Blocks.
    pub fn load(
        &self,
        name: &str,
        id: &ContentId,
        memory_limit_mib: u64,
    ) -> Result<Loaded, LoadError> {
        let key = (id.clone(), memory_limit_mib);
        let table_bytes = u64::from(self.max_table_elements) * engine::TABLE_ELEMENT_BYTES;
        let loaded = |module: Module, engine: Engine, source, blob, load| {
            Ok(Loaded {
                runnable: Runnable {
                    name: name.to_string(),
                    linker: Linker::of(&module).map_err(LoadError::Link)?,
                    module,
                    engine,
                    memory_limit_mib,
                    table_bytes,
                },
                source,
                blob,
                load,
            })
        };
        let in_memory = self
            .lru()
            .get_mut(&key)
            .map(|w| (w.module.clone(), w.engine.clone()));
        if let Some((module, engine)) = in_memory {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return loaded(
                module,
                engine,
                Source::Memory,
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        let engine = engine::headless(memory_limit_mib, self.max_table_elements, &self.memories);
        let started = Instant::now();
        let artifact_path = self.artifact_path(id);
        if let Ok(sealed) = std::fs::read(&artifact_path) {
            match self.unseal(&sealed) {
                None => {
                    tracing::warn!(path = %artifact_path.display(), "artifact without this node's seal: not loaded, compiling again");
                    self.stats.refused_artifacts.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&artifact_path);
                    let _ = std::fs::remove_file(self.seal_path(id));
                }
                Some(artifact) => match engine::deserialize(&engine, artifact) {
                    Ok(module) => {
                        self.stats.deserializations.fetch_add(1, Ordering::Relaxed);
                        let took = started.elapsed();
                        tracing::info!(function = name, content_id = %id, ms = took.as_secs_f64() * 1e3, "module loaded from the disk cache");
                        let module = self.keep(key, module, &engine, artifact.len());
                        return loaded(module.0, module.1, Source::Disk, Duration::ZERO, took);
                    }
                    Err(e) => {
                        tracing::warn!(path = %artifact_path.display(), error = %e, "unusable artifact, compiling again");
                        let _ = std::fs::remove_file(&artifact_path);
                        let _ = std::fs::remove_file(self.seal_path(id));
                    }
                },
            }
        }
        let blob_started = Instant::now();
        let blob_path = self.blob_path(id);
        let wasm = match std::fs::read(&blob_path) {
            Ok(wasm) if ContentId::of(&wasm) == *id => wasm,
            Ok(_) => {
                tracing::warn!(path = %blob_path.display(), "blob does not match its content id, dropping it");
                let _ = std::fs::remove_file(&blob_path);
                return Err(LoadError::Missing(id.clone()));
            }
            Err(_) => return Err(LoadError::Missing(id.clone())),
        };
        let blob = blob_started.elapsed();
        let compile_started = Instant::now();
        let artifact = engine::compile(&wasm).map_err(|e| LoadError::Compile(e.to_string()))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        self.write_once(&artifact_path, &self.seal(&artifact))?;
        self.sign(id, &artifact)?;
        let module = engine::deserialize(&engine, &artifact)
            .map_err(|e| LoadError::Compile(format!("loading the fresh artifact: {e}")))?;
        let took = compile_started.elapsed();
        tracing::info!(function = name, content_id = %id, ms = took.as_secs_f64() * 1e3, "module compiled");
        let (module, engine) = self.keep(key, module, &engine, artifact.len());
        loaded(module, engine, Source::Compiled, blob, took)
    }

    /// Keeps `module` (loaded into `engine`) in memory; the modules it pushes out go
    /// with their pools. Returns the module and engine to run: the ones a concurrent
    /// load kept first, if one did.
    fn keep(
        &self,
        key: ModuleKey,
        module: Module,
        engine: &Engine,
        bytes: usize,
    ) -> (Module, Engine) {
        let mut lru = self.lru();
        if let Some(kept) = lru.get_mut(&key) {
            // A concurrent load kept it first: its pools stay, and its engine is the one.
            return (kept.module.clone(), kept.engine.clone());
        }
        let warm = Warm {
            module: module.clone(),
            engine: engine.clone(),
            pools: HashMap::new(),
        };
        let evicted = lru.insert(key, warm, bytes as u64);
        drop(lru);
        for (id, _) in &evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(content_id = %id, "module evicted from memory");
        }
        (module, engine.clone())
    }

    /// Writes the seal other nodes check `artifact` (just compiled from `id`) by, if
    /// this node signs its artifacts. A seal already there (a concurrent compile's, of
    /// the same bytes) stays. A failure to sign is logged: the artifact is then this
    /// node's alone.
    fn sign(&self, id: &ContentId, artifact: &[u8]) -> Result<(), LoadError> {
        let Some((credentials, name)) = self.signer.get() else {
            return Ok(());
        };
        let claims = ArtifactClaims::of(id, &self.engine, name, artifact);
        match credentials.sign_artifact(&claims) {
            Ok(seal) => self.write_once(&self.seal_path(id), seal.as_bytes()),
            Err(e) => {
                tracing::error!(content_id = %id, error = %e, "signing an artifact failed: it is not shared");
                Ok(())
            }
        }
    }

    fn lru(&self) -> MutexGuard<'_, Lru<ModuleKey, Warm>> {
        self.in_memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blob_path(&self, id: &ContentId) -> PathBuf {
        self.blobs.join(format!("{id}.wasm"))
    }

    /// Writes `bytes` to `path` atomically (a temporary file of this write's own, then
    /// rename) unless present. Concurrent loads of one module may both write; the last
    /// rename wins with identical bytes.
    fn write_once(&self, path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        if path.exists() {
            return Ok(());
        }
        let unique = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{unique}", std::process::id()));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })
    }
}
