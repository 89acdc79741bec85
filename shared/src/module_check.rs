//! Checks a module must pass before it is deployed: it is valid WebAssembly of the
//! features edge runs ([`accepted_features`]), exports `_start`, and imports nothing but
//! the WASI preview1 functions the node's host provides.

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

/// The WASI preview1 module name.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The WASI preview1 functions the node's host implements. Everything a Rust or C
/// (wasi-libc) command module needs for CGI-style request handling, and sleeping
/// (`poll_oneoff` on clocks, bounded by the request's deadline); no filesystem, no
/// sockets.
pub const HOST_IMPORTS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_dir_name",
    "fd_prestat_get",
    "fd_read",
    "fd_seek",
    "fd_write",
    "poll_oneoff",
    "proc_exit",
    "random_get",
    "sched_yield",
];

/// The WebAssembly features a module may use: WebAssembly 2.0 (SIMD, bulk memory,
/// reference types, multi-value, sign extension, non-trapping conversions, mutable
/// globals) and extended constants. Refused, because each would let a module hold what
/// the node's budgets do not count, or reach what the host does not bound: threads and
/// shared memories (a guest blocked in `memory.atomic.wait` outlives its deadline),
/// several memories (only one is budgeted), 64-bit memories, exceptions, tail calls,
/// GC and the component model. The node's compiler is configured to match.
pub fn accepted_features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::SIMD
        | WasmFeatures::FLOATS
        | WasmFeatures::EXTENDED_CONST
}

/// Largest module accepted, in bytes.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// Why a module was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The bytes do not start with the wasm magic number.
    #[error("not a WebAssembly module (no \\0asm header)")]
    NotWasm,
    /// Larger than [`MAX_MODULE_BYTES`].
    #[error("module is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The validator rejected it.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// It is valid, but uses a feature edge does not run (see [`accepted_features`]).
    #[error(
        "module uses a WebAssembly feature edge does not run (threads and shared memory, \
         several memories, memory64, exceptions, tail calls and GC are refused): {0}"
    )]
    UnsupportedFeature(String),
    /// It has no exported function `_start`.
    #[error("module exports no function `_start`: build it as a WASI command (a `main`)")]
    NoStart,
    /// It imports something the host does not provide.
    #[error("module imports {module}.{name}, which the host does not provide")]
    UnsupportedImport {
        /// The import's module.
        module: String,
        /// The import's name.
        name: String,
    },
}

/// Checks `module` for deployment.
pub fn check_module(module: &[u8]) -> Result<(), ModuleError> {
    if module.len() > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge {
            size: module.len(),
            max: MAX_MODULE_BYTES,
        });
    }
    if !module.starts_with(b"\0asm") {
        return Err(ModuleError::NotWasm);
    }
    if let Err(e) = Validator::new_with_features(accepted_features()).validate_all(module) {
        // Valid with every feature on: it is the feature, not the module, that is refused.
        return Err(
            match Validator::new_with_features(WasmFeatures::all()).validate_all(module) {
                Ok(_) => ModuleError::UnsupportedFeature(e.to_string()),
                Err(_) => ModuleError::Invalid(e.to_string()),
            },
        );
    }
    let mut has_start = false;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(|e| ModuleError::Invalid(e.to_string()))? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    let provided = import.module == WASI_MODULE
                        && matches!(import.ty, TypeRef::Func(_))
                        && HOST_IMPORTS.contains(&import.name);
                    if !provided {
                        return Err(ModuleError::UnsupportedImport {
                            module: import.module.to_string(),
                            name: import.name.to_string(),
                        });
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    if export.name == "_start" && export.kind == wasmparser::ExternalKind::Func {
                        has_start = true;
                    }
                }
            }
            _ => {}
        }
    }
    if has_start {
        Ok(())
    } else {
        Err(ModuleError::NoStart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal module: optional import, optional `_start`.
    fn module(import: Option<(&str, &str)>, start: bool) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // type section: one type () -> ()
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        if let Some((module, name)) = import {
            let mut body = vec![1, module.len() as u8];
            body.extend_from_slice(module.as_bytes());
            body.push(name.len() as u8);
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&[0, 0]);
            m.push(2);
            m.push(body.len() as u8);
            m.extend_from_slice(&body);
        }
        // function section: one function of type 0
        m.extend_from_slice(&[3, 2, 1, 0]);
        if start {
            let func_index = u8::from(import.is_some());
            m.extend_from_slice(&[7, 10, 1, 6]);
            m.extend_from_slice(b"_start");
            m.extend_from_slice(&[0, func_index]);
        }
        // code section: empty body
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
        m
    }

    #[test]
    fn accepts_a_command_with_host_imports() {
        assert_eq!(
            check_module(&module(Some((WASI_MODULE, "sched_yield")), true)),
            Ok(())
        );
        assert_eq!(check_module(&module(None, true)), Ok(()));
    }

    #[test]
    fn refuses_each_bad_module_with_its_reason() {
        assert_eq!(check_module(b"hello"), Err(ModuleError::NotWasm));
        assert_eq!(
            check_module(&module(None, false)),
            Err(ModuleError::NoStart)
        );
        assert!(matches!(
            check_module(&module(Some((WASI_MODULE, "sock_accept")), true)),
            Err(ModuleError::UnsupportedImport { name, .. }) if name == "sock_accept"
        ));
        assert!(matches!(
            check_module(&module(Some(("env", "magic")), true)),
            Err(ModuleError::UnsupportedImport { module, .. }) if module == "env"
        ));
        let mut truncated = module(None, true);
        truncated.truncate(truncated.len() - 2);
        assert!(matches!(
            check_module(&truncated),
            Err(ModuleError::Invalid(_))
        ));
        let huge = vec![0u8; MAX_MODULE_BYTES + 1];
        assert!(matches!(
            check_module(&huge),
            Err(ModuleError::TooLarge { .. })
        ));
    }
}
