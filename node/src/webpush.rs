//! The driver's Web Push sender: turns the relay core's [`relay::Output::Wake`] into an HTTP
//! request and its answer into a [`WakeOutcome`]. Deciding who to wake and when is the core's
//! (`relay::push`); this file only sends.
//!
//! Each wake-up is one RFC 8030 POST: the constant [`WAKE_BODY`] encrypted to the
//! subscription (RFC 8291, aes128gcm, `web-push-native`), a VAPID token (RFC 8292) signed by the
//! node's own P-256 key, `TTL`, `Urgency: high` and a constant `Topic` (so a push service holding
//! an undelivered wake-up replaces it instead of queueing another).
//!
//! What the node connects to is checked twice: the endpoint's name is resolved and every
//! address checked when the user registers it ([`check_resolved`]), and the HTTP client's
//! resolver drops refused addresses on every request ([`SafeResolver`]), so a name that later
//! resolves inside the operator's network is not reached. No redirect is followed and no proxy
//! from the environment is used.
//!
//! Requests block in a thread of tokio's blocking pool; the core bounds how many are in flight
//! ([`relay::MAX_WAKES_IN_FLIGHT`]), and each has a deadline ([`WAKE_TIMEOUT`]).

use crate::relay::{self, WakeId, WakeOutcome};
use hestia_protocol::Millis;
use hestia_protocol::push::{self, EndpointRefusal, Subscription, WAKE_BODY};
use hestia_protocol::wire::WakeFailure;
use hestia_store::node::NodeDb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use web_push_native::jwt_simple::algorithms::{ECDSAP256PublicKeyLike, ES256KeyPair};

/// Longest a wake-up request may take, connection to answer.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a push service keeps an undelivered wake-up (`TTL`). Also the VAPID token's
/// lifetime, which RFC 8292 caps at a day.
pub const WAKE_TTL: Duration = Duration::from_secs(12 * 3600);
/// The `Topic` of every wake-up: one waiting wake-up per subscription is enough.
pub const WAKE_TOPIC: &str = "hestia-wake";
/// Longest a registration waits for its endpoint's name to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Loads the node's VAPID key from the store, or makes and stores one.
pub fn vapid_key(db: &NodeDb) -> Result<ES256KeyPair, crate::driver::NodeError> {
    if let Some(bytes) = db.vapid_key()? {
        return ES256KeyPair::from_bytes(&bytes)
            .map_err(|e| crate::driver::NodeError::Key(format!("VAPID key: {e}")));
    }
    let key = ES256KeyPair::generate();
    let bytes: [u8; 32] = key
        .to_bytes()
        .try_into()
        .map_err(|_| crate::driver::NodeError::Key("VAPID key is not 32 bytes".into()))?;
    db.set_vapid_key(&bytes)?;
    Ok(key)
}

/// The VAPID public key as a subscription is made with it (uncompressed P-256 point).
pub fn vapid_public(key: &ES256KeyPair) -> Vec<u8> {
    key.public_key().public_key().to_bytes_uncompressed()
}

/// Resolves the endpoint's host (if a name) and checks every address, as a registration does.
pub async fn check_resolved(endpoint: &str, allow_loopback: bool) -> Result<(), EndpointRefusal> {
    let e = push::check_endpoint(endpoint, allow_loopback)?;
    if e.ip().is_some() {
        return Ok(()); // checked as a literal already
    }
    let lookup = tokio::net::lookup_host((e.host, e.port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(_)) | Err(_) => return Err(EndpointRefusal::Unresolved),
    };
    if addrs.is_empty() {
        return Err(EndpointRefusal::Unresolved);
    }
    if addrs
        .iter()
        .any(|a| !push::address_allowed(a.ip(), allow_loopback))
    {
        return Err(EndpointRefusal::PrivateAddress);
    }
    Ok(())
}

/// ureq's resolver, keeping only addresses a wake-up may go to. None left: the request fails
/// before any connection.
#[derive(Debug)]
struct SafeResolver {
    inner: DefaultResolver,
    allow_loopback: bool,
}

impl Resolver for SafeResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for a in all.iter() {
            if push::address_allowed(a.ip(), self.allow_loopback) {
                kept.push(*a);
            }
        }
        if kept.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(kept)
    }
}

/// Sends wake-ups and reports their outcomes on a channel the driver reads.
pub struct Sender {
    agent: ureq::Agent,
    key: Arc<ES256KeyPair>,
    /// The VAPID `sub` claim: how the push service reaches the operator.
    contact: Arc<str>,
    results: mpsc::Sender<(WakeId, WakeOutcome)>,
}

impl Sender {
    /// A sender and the receiving end of its outcomes. The channel holds every wake-up in
    /// flight ([`relay::MAX_WAKES_IN_FLIGHT`]), so a send into it never waits.
    pub fn new(
        key: ES256KeyPair,
        contact: String,
        allow_loopback: bool,
    ) -> (Sender, mpsc::Receiver<(WakeId, WakeOutcome)>) {
        let config = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(WAKE_TIMEOUT))
            .user_agent("hestia-node")
            .build();
        let resolver = SafeResolver {
            inner: DefaultResolver::default(),
            allow_loopback,
        };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
        let (tx, rx) = mpsc::channel(relay::MAX_WAKES_IN_FLIGHT + 1);
        (
            Sender {
                agent,
                key: Arc::new(key),
                contact: contact.into(),
                results: tx,
            },
            rx,
        )
    }

    /// Sends one wake-up in the background; its outcome arrives on the channel.
    pub fn send(&self, wake: WakeId, target: Subscription) {
        let agent = self.agent.clone();
        let key = self.key.clone();
        let contact = self.contact.clone();
        let results = self.results.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = deliver(&agent, &key, &contact, &target);
            tracing::debug!(?outcome, "push wake-up sent");
            // The driver holds the receiver for as long as it runs.
            let _ = results.try_send((wake, outcome));
        });
    }
}

fn deliver(
    agent: &ureq::Agent,
    key: &ES256KeyPair,
    contact: &str,
    target: &Subscription,
) -> WakeOutcome {
    let failed = WakeOutcome::Failed(WakeFailure::Refused(EndpointRefusal::BadKeys));
    let Ok(endpoint) = target.endpoint.parse::<ureq::http::Uri>() else {
        return WakeOutcome::Failed(WakeFailure::Refused(EndpointRefusal::Malformed));
    };
    let Ok(ua_public) = web_push_native::p256::PublicKey::from_sec1_bytes(&target.p256dh) else {
        return failed;
    };
    let auth = web_push_native::Auth::clone_from_slice(&target.auth);
    let builder = web_push_native::WebPushBuilder::new(endpoint, ua_public, auth)
        .with_valid_duration(WAKE_TTL)
        .with_vapid(key, contact);
    let Ok(mut request) = builder.build(WAKE_BODY) else {
        return failed;
    };
    let headers = request.headers_mut();
    headers.insert("urgency", ureq::http::HeaderValue::from_static("high"));
    headers.insert("topic", ureq::http::HeaderValue::from_static(WAKE_TOPIC));
    match agent.run(request) {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| secs.saturating_mul(1000) as Millis);
            outcome_of(response.status().as_u16(), retry_after)
        }
        Err(ureq::Error::Timeout(_)) => WakeOutcome::Retry {
            failure: WakeFailure::Timeout,
            retry_after_ms: None,
        },
        Err(ureq::Error::HostNotFound) => {
            WakeOutcome::Failed(WakeFailure::Refused(EndpointRefusal::PrivateAddress))
        }
        Err(_) => WakeOutcome::Retry {
            failure: WakeFailure::Unreachable,
            retry_after_ms: None,
        },
    }
}

/// What an HTTP status means for a wake-up (RFC 8030 §5, §7.3).
pub fn outcome_of(status: u16, retry_after_ms: Option<Millis>) -> WakeOutcome {
    match status {
        200..=299 => WakeOutcome::Delivered,
        404 | 410 => WakeOutcome::Gone { status },
        429 | 500..=599 => WakeOutcome::Retry {
            failure: WakeFailure::Status(status),
            retry_after_ms,
        },
        _ => WakeOutcome::Failed(WakeFailure::Status(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(outcome_of(201, None), WakeOutcome::Delivered);
        assert_eq!(outcome_of(410, None), WakeOutcome::Gone { status: 410 });
        assert_eq!(outcome_of(404, None), WakeOutcome::Gone { status: 404 });
        assert_eq!(
            outcome_of(429, Some(5000)),
            WakeOutcome::Retry {
                failure: WakeFailure::Status(429),
                retry_after_ms: Some(5000)
            }
        );
        assert!(matches!(outcome_of(503, None), WakeOutcome::Retry { .. }));
        // A redirect is not followed, and not retried.
        assert_eq!(
            outcome_of(301, None),
            WakeOutcome::Failed(WakeFailure::Status(301))
        );
        assert_eq!(
            outcome_of(400, None),
            WakeOutcome::Failed(WakeFailure::Status(400))
        );
    }

    #[tokio::test]
    async fn registration_resolves_names_and_refuses_private_answers() {
        // /etc/hosts answers for localhost: loopback, refused unless the node allows it.
        assert_eq!(
            check_resolved("http://localhost:8090/notify/x", false).await,
            Err(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            check_resolved("http://localhost:8090/notify/x", true).await,
            Ok(())
        );
        assert_eq!(
            check_resolved("https://no-such-host.invalid/x", false).await,
            Err(EndpointRefusal::Unresolved)
        );
    }
}
