//! wasmer engines: one throwaway metered compiler engine per compile, and one headless
//! engine per loaded module that runs its compiled artifact.
//!
//! Why this split: wasmer's `Metering` middleware meters exactly one module, so each
//! compile gets a fresh cranelift + metering engine; the artifact it produces is
//! serialized (for the disk cache anyway) and deserialized into a headless engine, where
//! the metering instrumentation still applies. A memory limit is a property of the
//! engine's tunables; a headless engine of its own per module also lets the module's
//! code memory go when the module does (see [`headless`]).
//!
//! One of the crate's three `unsafe` modules (with [`super::memories`] and
//! [`super::watchdog`]): wasmer's `Tunables` trait has `unsafe` methods (they hand out
//! memory definitions inside a VM context), and `Module::deserialize` is `unsafe`
//! because it trusts the bytes. Our tunables only narrow the memory type and
//! delegate to wasmer's own `BaseTunables`; an artifact is deserialized only once its
//! seal, made with this node's own secret when it wrote it, verifies (see
//! `runtime::cache`), and under a key naming the engine and target.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::Arc;

use wasmer::sys::vm::{VMConfig, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition};
use wasmer::sys::{BaseTunables, Cranelift, EngineBuilder, NativeEngineExt, Tunables};
use wasmer::wasmparser::Operator;
use wasmer::{
    CompileError, DeserializeError, Engine, MemoryError, MemoryStyle, MemoryType, Module, Pages,
    TableStyle, TableType,
};
use wasmer_middlewares::Metering;

use super::memories::MemoryPool;

/// Identifies the compiler configuration an artifact was produced by. Part of every
/// on-disk artifact's key: change it whenever compiling would produce different code
/// (compiler, metering cost, wasmer release); wasmer's own header check is the backstop.
pub const COMPILER_ID: &str = "wasmer-7.4-cranelift-metering2-features1";

/// One unit of fuel per operator; bulk operations pay their length on top
/// ([`super::metering`]).
fn operator_cost(_: &Operator) -> u64 {
    1
}

/// Compiles `wasm` into a serialized artifact that carries fuel metering.
pub fn compile(wasm: &[u8]) -> Result<Vec<u8>, CompileError> {
    let mut compiler = Cranelift::default();
    wasmer::sys::CompilerConfig::push_middleware(
        &mut compiler,
        Arc::new(Metering::new(0, operator_cost)),
    );
    wasmer::sys::CompilerConfig::push_middleware(
        &mut compiler,
        Arc::new(super::metering::BulkMetering::default()),
    );
    let engine: Engine = EngineBuilder::new(compiler)
        .set_features(Some(features()))
        .engine()
        .into();
    let module = Module::new(&engine, wasm)?;
    let artifact = module
        .serialize()
        .map_err(|e| CompileError::Codegen(format!("serializing the artifact: {e}")))?;
    Ok(artifact.to_vec())
}

/// The features the compiler accepts: those of
/// [`edge_shared::module_check::accepted_features`], which every module was checked
/// against at deploy, so a module the check let through compiles and no other does.
fn features() -> wasmer::sys::Features {
    let mut features = wasmer::sys::Features::none();
    features
        .reference_types(true)
        .simd(true)
        .bulk_memory(true)
        .multi_value(true)
        .extended_const(true);
    features
}

/// The part of an artifact's key that names this host: compiler id, target and CPU
/// features, so an artifact is never loaded on a host that did not write it.
pub fn host_key() -> String {
    let target = wasmer::sys::Target::default();
    format!(
        "{COMPILER_ID}-{}-{:?}",
        target.triple(),
        target.cpu_features()
    )
}

/// Bytes one table element is counted as in the memory budget (a function reference
/// and its type, as wasmer lays them out, rounded up).
pub const TABLE_ELEMENT_BYTES: u64 = 16;

/// A headless engine whose instances may grow memory to `limit_mib` MiB at most, and
/// each table to `max_table_elements` elements.
///
/// One per loaded module, never shared: a wasmer engine keeps the code memory of every
/// module loaded into it until the engine itself is dropped, so a shared engine would
/// keep an evicted module's code forever. With its own engine, a module's code goes when
/// the module and its last instance do.
pub fn headless(limit_mib: u64, max_table_elements: u32, memories: &Arc<MemoryPool>) -> Engine {
    let pages = u32::try_from(limit_mib.saturating_mul(16))
        .unwrap_or(u32::MAX)
        .min(65_536);
    let mut engine = <Engine as NativeEngineExt>::headless();
    engine.set_tunables(MemoryLimit {
        max_pages: Pages(pages),
        max_table_elements,
        memories: Arc::clone(memories),
        base: BaseTunables::new(),
    });
    engine
}

/// Loads an artifact this node wrote into `engine`.
pub fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Module, DeserializeError> {
    // SAFETY: the artifact was produced by `compile` on this host and stored under
    // `host_key()`; wasmer still checks its header for version and target.
    unsafe { Module::deserialize(engine, artifact) }
}

/// Tunables that cap every linear memory at `max_pages` and every table at
/// `max_table_elements`, and take instances' memories from the node's pool
/// ([`super::memories`]); otherwise wasmer's defaults.
struct MemoryLimit {
    max_pages: Pages,
    max_table_elements: u32,
    memories: Arc<MemoryPool>,
    base: BaseTunables,
}

impl MemoryLimit {
    fn narrow(&self, ty: &MemoryType) -> Result<MemoryType, MemoryError> {
        if ty.minimum > self.max_pages {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: self.max_pages,
            });
        }
        let mut narrowed = *ty;
        narrowed.maximum = Some(ty.maximum.map_or(self.max_pages, |m| m.min(self.max_pages)));
        Ok(narrowed)
    }

    fn narrow_table(&self, ty: &TableType) -> Result<TableType, String> {
        let max = self.max_table_elements;
        if ty.minimum > max {
            return Err(format!(
                "a table of {} elements, over the node's max_table_elements {max}",
                ty.minimum
            ));
        }
        let mut narrowed = *ty;
        narrowed.maximum = Some(ty.maximum.map_or(max, |m| m.min(max)));
        Ok(narrowed)
    }
}

impl Tunables for MemoryLimit {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        self.base.create_host_memory(&self.narrow(ty)?, style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let narrowed = self.narrow(ty)?;
        // SAFETY: same contract as ours, passed through unchanged. The pool serves the
        // static style that compiled code on 64-bit hosts assumes; anything else is
        // wasmer's own memory.
        unsafe {
            match style {
                MemoryStyle::Static if !ty.shared => {
                    self.memories.memory(&narrowed, vm_definition_location)
                }
                _ => self
                    .base
                    .create_vm_memory(&narrowed, style, vm_definition_location),
            }
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(&self.narrow_table(ty)?, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: same contract as ours, passed through unchanged.
        unsafe {
            self.base
                .create_vm_table(&self.narrow_table(ty)?, style, vm_definition_location)
        }
    }

    fn vmconfig(&self) -> &VMConfig {
        self.base.vmconfig()
    }
}
