//! Edge node: runs WebAssembly functions under wasmer and serves them to gateways over
//! HTTP/3.
//!
//! A request's way through the crate:
//!
//! 1. [`server`] serves gateways on the shared HTTP/3 accept loop of `edge_net::http3`
//!    and turns each request into a deploy (`PUT /_edge/v1/deployments/{id}`), the
//!    status, or a [`Call`] of the deployment named in `x-edge-function`; and turns what
//!    came of it back into HTTP, failures in one place.
//! 2. [`Node`] ([`node`]) holds the loaded [`Deployment`]s. A deploy is checked first
//!    ([`deployment::check`]: manifest, hash, wasm, limits), then its module is kept in
//!    the blob store and loaded through [`runtime::cache`] (memory, else the on-disk
//!    artifact, else a compile in [`runtime::engine`]). The cache owns warm state: a
//!    deployment is warm while its module is in memory there, with its instance pool.
//! 3. A call is admitted by [`admission`] (node slots, the function's concurrency, the
//!    memory budget; else a bounded FIFO wait, else `503`). If its module left memory,
//!    the call loads it on a worker thread under that admission. It then runs on a
//!    thread of [`workers`]: it takes a ready instance from that worker's [`pool`] (or
//!    makes one with [`runtime::invoke`]), with the WASI host of [`runtime::wasi`] fed
//!    by the CGI environment of [`cgi`], under the function's fuel and memory limits.
//! 4. The guest's CGI output is parsed back ([`cgi`]) into an [`Answer`], or the call
//!    ends in a [`Failure`] with its status code ([`Failure::status`]). [`status`] is
//!    what the node says of itself to gossip and operators.
//!
//! [`fuzz`] holds what the node's fuzz targets check (the CGI parser, the WASI host).

pub mod admission;
pub mod call;
pub mod cgi;
pub mod deployment;
pub mod fuzz;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod status;
pub mod tail;
pub mod usage;
pub mod workers;

pub use call::{Answer, Call, Failure};
pub use deployment::{DeployError, Deployment};
pub use node::Node;
pub use status::{DeploymentStatus, Load, NodeStatus};
