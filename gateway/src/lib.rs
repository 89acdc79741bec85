//! Edge gateway: the users' entry point.
//!
//! Users' requests enter through [`ingress`]: HTTP/3 on UDP ([`ingress::h3`], on the
//! shared accept loop of `edge_net::http3`) and HTTP/1.1 + HTTP/2 over TLS on TCP
//! ([`ingress::tcp`]), same port number, every answer carrying `Alt-Svc: h3`. Both hand
//! each request to [`proxy::Gateway`]:
//!
//! 1. [`route`] finds the function in the route table of [`functions`] (host
//!    `NAME.<domain>` or path prefix `/NAME`), the version its traffic split (or the
//!    request) picks, and its limits in force; the body is read up to its limit;
//! 2. the routing policy of `edge_shared::routing` orders the nodes over the
//!    [`membership`] snapshot that gossip keeps current, with this gateway's own
//!    in-flight counts and recent failures as input;
//! 3. the pure `edge_shared::attempt` sequence says what to do with each outcome (send
//!    to the next node, deploy then send again, answer, fail), and [`nodes`] does it
//!    over pooled HTTP/3 connections;
//! 4. the answer streams back with `server-timing`; the gateway's own failures become
//!    answers in one place.
//!
//! [`cluster`] turns gossip into snapshots, places functions on their home nodes and
//! warms them ahead of need; [`status`] shows cluster members what this gateway sees;
//! [`admin`] is the operators' API, on a listener of its own; [`registry`] keeps every
//! function's versions and traffic, durably (embedded, or shared on NATS JetStream:
//! [`nats`]); [`schedule`] fires scheduled functions.

pub mod admin;
pub mod budget;
pub mod cluster;
pub mod functions;
pub mod ingress;
pub mod membership;
pub mod metrics;
pub mod nats;
pub mod nodes;
pub mod proxy;
pub mod registry;
mod request_trace;
pub mod route;
pub mod schedule;
pub mod status;
