//! Sans-IO core of edge, shared by the gateway, the node and the load tester.
//!
//! Nothing here touches wasmer, and only [`gossip`] opens a socket:
//!
//! - [`manifest`]: what a deployed function is: its [`manifest::ContentId`] (sha256 of the
//!   module), routes, environment and [`manifest::Limits`], and the
//!   [`manifest::DeploymentId`] the gateway names it by when it forwards a request.
//! - [`module_check`]: the checks a module passes before anything runs it (valid wasm, a
//!   `_start` export, only imports the node's host provides).
//! - [`wire`]: the headers and paths the gateway and node speak over HTTP/3, the
//!   `x-edge-refused` reasons, and `server-timing`.
//! - [`tls`]: PEM loading and rustls configurations (ring provider, TLS 1.3 for QUIC).
//! - [`config`]: the gateway's and node's configuration files, loaded with the `config`
//!   crate, checked field by field, every error naming its file and key.
//! - [`gossip`]: membership, failure detection and load dissemination (chitchat over
//!   UDP signed with the cluster key), and an in-memory network to simulate clusters.

pub mod config;
pub mod gossip;
pub mod manifest;
pub mod module_check;
pub mod tls;
pub mod wire;
