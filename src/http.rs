//! HTTP helpers every part of corral uses, so each rule is written once:
//! [`client`] is the one client (pooled, with deadlines, http and https)
//! for the CLI, the operator and the tests; [`server`] is the one accept
//! loop (a global concurrency limit, a header-read timeout, graceful
//! shutdown) for the admin API, the operator's metrics, the built-in
//! worker and proxy mode's front, whose TLS is [`tls`], whose connections'
//! deadlines [`activity`] keeps, and whose request heads [`framing`] and
//! [`head_limits`] read.

pub mod activity;
pub mod client;
pub mod fields;
pub mod framing;
pub mod head_limits;
pub mod server;
pub mod tls;
