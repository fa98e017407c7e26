//! Calls' media relay. Each device sends its call's media only to its own home node, which
//! relays it for its own authenticated users: each node sees only its own user's address, and
//! neither device sees the other's.
//!
//! - [`server`]: the node's TURN server, sans-IO.
//! - [`client`]: a device's TURN client, sans-IO, driven inside its call.
//! - [`udp`]: the node's thin driver for the server (its sockets).

pub mod client;
pub mod server;
pub mod udp;

/// A datagram's bytes.
pub type Bytes = Vec<u8>;

#[cfg(test)]
mod tests;
