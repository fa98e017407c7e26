//! A Hestia node and the client library a user's device runs.
//!
//! - [`relay`]: the relay core, a sans-IO state machine (mailboxes, federation outbox, retries,
//!   expiry, long-poll fetches). No clock, no sockets, no database: the same core runs under the
//!   libp2p driver and under the simulator.
//! - [`driver`]: the thin libp2p + RocksDB + tokio driver around the core.
//! - [`frame`]: the length-prefixed, size-bounded request-response codec for both protocols.
//! - [`ip_limits`]: inbound connections per source address.
//! - [`webpush`]: the driver's Web Push sender (push wake-ups the core decides on).
//! - [`client`]: the device side: a connection to the home node and the user's local state.

pub mod admin_socket;
pub mod client;
pub mod driver;
pub mod frame;
pub mod ip_limits;
mod local_server;
pub mod metrics;
pub mod relay;
pub mod turn;
pub mod webpush;
