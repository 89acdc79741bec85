//! The operator's side of edge: the `edge` CLI (`edge up`, `edge call`, and `edge deploy`,
//! `edge functions`, `edge versions`, `edge traffic`, `edge rollback`, `edge rm`, `edge
//! cluster`, `edge tail`, `edge usage` over the admin API) and what it
//! needs beyond the daemons. A crate of its own, so that neither the gateway daemon nor
//! the load tester carries process orchestration.
//!
//! - [`admin`]: the admin API's client and what the commands send and print;
//! - [`call`]: `edge call`, and the probe of a version `edge deploy` makes;
//! - [`cluster`]: a local cluster of real processes, as `edge up`, the integration tests
//!   and `edge-loadtest compare` start it: configuration per process, nodes joining
//!   through the gateway's gossip address, logs in a state folder;
//! - [`devcerts`]: a development cluster CA and the certificates each process presents,
//!   the gossip cluster key and the admin token;
//! - [`supervise`]: `edge up` starting again the members that exit;
//! - [`tail`]: how `edge tail` prints a function's calls and log lines;
//! - [`usage`]: how `edge usage` asks for and prints the cluster's usage report.

pub mod admin;
pub mod call;
pub mod cluster;
pub mod devcerts;
pub mod supervise;
pub mod tail;
pub mod usage;
