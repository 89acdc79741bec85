//! The wasm runtime: engines, the compiled-module cache, the WASI host, invocation, and
//! the watchdog that stops a guest at its deadline.

pub mod cache;
pub mod engine;
pub mod guest_log;
pub mod invoke;
pub mod lru;
pub mod memories;
pub mod metering;
pub mod stdout;
pub mod wasi;
pub mod watchdog;
