//! Where users' requests come in: HTTP/3 over QUIC ([`h3`]) and HTTP/1.1 + HTTP/2 over TLS
//! on TCP ([`tcp`]), both handing requests to [`crate::proxy::Gateway`].

mod connection;
pub mod h3;
pub mod tcp;
