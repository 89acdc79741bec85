//! Edge gateway and operator CLI.
//!
//! Users' requests enter through [`ingress`]: HTTP/3 on UDP ([`ingress::h3`]) and
//! HTTP/1.1 + HTTP/2 over TLS on TCP ([`ingress::tcp`]), same port number, every answer
//! carrying `Alt-Svc: h3`. Both hand each request to [`proxy::Gateway`], which finds the
//! function in the [`routes`] table (host `NAME.<domain>` or path prefix `/NAME`), reads
//! the body up to the function's limit, ranks the nodes with the configured [`routing`]
//! policy over the [`membership`] snapshot that gossip keeps current (nodes that just
//! failed last) and forwards over a pooled HTTP/3 connection from [`nodes`]. A node that
//! does not
//! have the function yet (`503 x-edge-refused: not-found`) gets it deployed and the request
//! again; a refusal or an unreachable node moves the request to the next node; a request
//! that broke mid-way is retried only if its method is idempotent.
//!
//! For operators and tests: [`devcerts`] makes a development CA and certificates,
//! [`cluster`] starts a local cluster of real processes (`edge up`), and [`client`] is the
//! HTTP/3 client behind `edge call`.

pub mod client;
pub mod cluster;
pub mod devcerts;
pub mod ingress;
pub mod membership;
pub mod nodes;
pub mod proxy;
pub mod routes;
pub mod routing;
