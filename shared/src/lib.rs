//! The pure decision core of edge, shared by the gateway, the node, the CLI and the load
//! tester. No sockets, no wasmer, no async runtime: every decision on the request path is
//! a function of its inputs (and `now` and an RNG where it needs them), unit-tested
//! without IO. The IO they share is the `edge-net` crate beside this one.
//!
//! What a request meets, in order:
//!
//! - [`routes`]: which function a host and path are for;
//! - [`limits`]: the function's limits in force, computed once from its [`manifest`] and
//!   the [`config`] defaults;
//! - [`view`]: the gateway's picture of the nodes, built from [`gossip`] members;
//! - [`routing`]: the policies that order the nodes for one request (least-loaded-warm,
//!   round robin, random), the pre-warm target and each function's home node;
//! - [`attempt`]: the gateway's attempt sequence over that order (send, deploy and send
//!   again, move on, answer or fail);
//! - [`admission`]: the node's slots, per-function concurrency, memory budget and
//!   bounded FIFO queues, and the `Retry-After` arithmetic;
//! - [`wire`]: the headers and paths gateway and node speak, refusals, `server-timing`.
//!
//! And around it: [`module_check`], the checks a module passes before anything runs it;
//! [`gossip`], the key-values each member publishes and their codecs; [`config`], the
//! configuration files, checked field by field, every error naming its file and key;
//! [`fuzz`], what the fuzz targets check of each input taken from strangers; [`usage`],
//! what a node's usage meter reports; [`trace`], W3C trace context; [`artifact`], the seal of a
//! compiled artifact one node hands another; [`retry_budget`], how many refusals for
//! overload a gateway sends on to another node.

pub mod admission;
pub mod artifact;
pub mod attempt;
pub mod config;
pub mod demand;
pub mod fuzz;
pub mod gossip;
pub mod limits;
pub mod manifest;
pub mod module_check;
pub mod retry_budget;
pub mod routes;
pub mod routing;
pub mod synthetic;
pub mod trace;
pub mod usage;
pub mod view;
pub mod wire;
