//! Hestia's protocol: identities and addresses, the envelope format, wire messages, the codec and
//! the end-to-end crypto. Everything here is pure: no IO, no clock, no threads. Callers pass the
//! current time (`now`, Unix milliseconds) and a random number generator where one is needed, so
//! tests and simulations can replay any run from a seed.
//!
//! Layout:
//! - [`call`]: call signalling carried inside the end-to-end session.
//! - [`codec`]: the one place that turns wire and stored types into bytes and back; every decode
//!   is bounded by a size limit and total (never panics).
//! - [`identity`]: a user's ed25519 identity key, its public [`identity::UserId`], fingerprints,
//!   printable addresses and contact cards.
//! - [`seal`]: the ephemeral-static sealed box (X25519 + HKDF-SHA256 + XChaCha20-Poly1305).
//! - [`envelope`]: what relays carry: a minimal clear header and a padded sealed body, and the
//!   [`envelope::Letter`] inside it.
//! - [`session`]: forward-secret sessions: prekeys, X3DH and the Double Ratchet with header
//!   encryption.
//! - [`wire`]: requests and responses of `/hestia/fed/1` and `/hestia/client/1`, and presence.
//! - [`push`]: Web Push subscriptions, the checks on their endpoints, the wake-up body.
//! - [`stun`]: STUN and TURN messages between a device's call and its home node's relay.
//! - [`turn`]: the short-lived credentials a node hands its users for its call relay.
//! - [`safety`]: safety numbers two people compare to verify each other.
//! - [`redact`]: the one wrapper through which user ids reach a log.
//! - [`display`]: the only way text from other users reaches a screen (controls neutralised).

pub mod call;
pub mod codec;
pub mod display;
pub mod envelope;
pub mod file;
pub mod frame;
pub mod identity;
pub mod push;
pub mod redact;
pub mod safety;
pub mod seal;
pub mod session;
pub mod stun;
pub mod turn;
pub mod wire;

/// Wall-clock time in milliseconds since the Unix epoch. Envelope expiry is absolute wall-clock
/// time because it crosses machines; everything that takes `now` takes one of these.
pub type Millis = u64;
