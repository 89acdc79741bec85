//! The operator's side of edge: the `edge` CLI (`edge up`, `edge call`) and what it
//! needs beyond the daemons. A crate of its own, so that neither the gateway daemon nor
//! the load tester carries process orchestration.
//!
//! - [`cluster`]: a local cluster of real processes, as `edge up`, the integration tests
//!   and `edge-loadtest compare` start it: configuration per process, nodes joining
//!   through the gateway's gossip address, logs in a state folder;
//! - [`devcerts`]: a development cluster CA and the certificates each process presents,
//!   and the gossip cluster key.

pub mod cluster;
pub mod devcerts;
