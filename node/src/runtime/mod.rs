//! The wasm runtime: engines, the compiled-module cache, the WASI host, invocation.

pub mod cache;
pub mod engine;
pub mod invoke;
pub mod wasi;
