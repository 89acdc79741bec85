//! Blob store and compiled-module cache: in memory, and serialized on disk so that a
//! restarted node deserializes instead of compiling.
//!
//! Layout under the cache folder: `blobs/{content id}.wasm` (the module bytes, verified
//! against their hash) and `artifacts/{host key}/{content id}.bin` (compiled code).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use edge_shared::manifest::ContentId;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmer::Module;

use super::engine::{self, Engines};
use super::invoke::Runnable;

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
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// wasmer refused to compile it.
    #[error("compile failed: {0}")]
    Compile(String),
    /// The cache folder could not be written.
    #[error("cache {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The compiled-module cache.
pub struct ModuleCache {
    blobs: PathBuf,
    artifacts: PathBuf,
    engines: Engines,
    in_memory: DashMap<(ContentId, u64), Module>,
    stats: CacheStats,
}

impl ModuleCache {
    /// A cache under `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<ModuleCache, LoadError> {
        let host = hex::encode(&Sha256::digest(engine::host_key().as_bytes())[..8]);
        let cache = ModuleCache {
            blobs: dir.join("blobs"),
            artifacts: dir.join("artifacts").join(host),
            engines: Engines::default(),
            in_memory: DashMap::new(),
            stats: CacheStats::default(),
        };
        for d in [&cache.blobs, &cache.artifacts] {
            std::fs::create_dir_all(d).map_err(|source| LoadError::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(cache)
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// A runnable for module `wasm` (whose hash is `id`) under a memory limit: from
    /// memory, else from the disk artifact, else compiled (and written to disk). Blocks.
    pub fn load(
        &self,
        name: &str,
        id: &ContentId,
        wasm: &[u8],
        memory_limit_mib: u64,
    ) -> Result<(Runnable, Source, Duration), LoadError> {
        let started = Instant::now();
        let engine = self.engines.for_memory_limit(memory_limit_mib);
        let runnable = |module: Module| Runnable {
            name: name.to_string(),
            module,
            engine: engine.clone(),
            memory_limit_mib,
        };
        let key = (id.clone(), memory_limit_mib);
        if let Some(module) = self.in_memory.get(&key) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((runnable(module.clone()), Source::Memory, started.elapsed()));
        }
        self.write_once(&self.blobs.join(format!("{id}.wasm")), wasm)?;
        let artifact_path = self.artifacts.join(format!("{id}.bin"));
        if let Ok(artifact) = std::fs::read(&artifact_path) {
            match engine::deserialize(&engine, &artifact) {
                Ok(module) => {
                    self.stats.deserializations.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(function = name, content_id = %id, "module loaded from the disk cache");
                    self.in_memory.insert(key, module.clone());
                    return Ok((runnable(module), Source::Disk, started.elapsed()));
                }
                Err(e) => {
                    tracing::warn!(path = %artifact_path.display(), error = %e, "unusable artifact, compiling again");
                    let _ = std::fs::remove_file(&artifact_path);
                }
            }
        }
        let artifact = engine::compile(wasm).map_err(|e| LoadError::Compile(e.to_string()))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        self.write_once(&artifact_path, &artifact)?;
        let module = engine::deserialize(&engine, &artifact)
            .map_err(|e| LoadError::Compile(format!("loading the fresh artifact: {e}")))?;
        tracing::info!(function = name, content_id = %id, ms = started.elapsed().as_millis() as u64, "module compiled");
        self.in_memory.insert(key, module.clone());
        Ok((runnable(module), Source::Compiled, started.elapsed()))
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
