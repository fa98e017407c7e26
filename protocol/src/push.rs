//! Push wake-ups: the Web Push (RFC 8030) subscription a device registers with its home node,
//! the checks a node applies to the endpoint before it will ever send there, and the constant
//! wake-up body.
//!
//! A wake-up says only "mail waits": its plaintext is [`WAKE_BODY`], the same bytes every time
//! (no sender, no count, no envelope id), encrypted to the subscription with RFC 8291
//! (aes128gcm) by the node's driver. The push service learns that the device was woken, and
//! when; nothing else.
//!
//! Endpoint checks are pure: [`check_endpoint`] parses the URL, [`address_allowed`] says
//! whether the node may connect to an address it resolved. Resolving is the driver's job.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The plaintext of every wake-up. Constant, so the push service, which may see the decrypted
/// body on some platforms, learns nothing from it.
pub const WAKE_BODY: &[u8] = b"hestia: mail waits";
/// Longest endpoint URL a node stores (push services' URLs are a few hundred bytes).
pub const MAX_ENDPOINT_LEN: usize = 1000;
/// Length of a subscription's P-256 public key (`p256dh`, SEC1 uncompressed).
pub const P256DH_LEN: usize = 65;
/// Length of a subscription's authentication secret (`auth`).
pub const AUTH_LEN: usize = 16;
/// Subscriptions one user may hold on their node: a few devices or distributors.
pub const MAX_SUBSCRIPTIONS_PER_USER: usize = 4;

/// A Web Push subscription, as a UnifiedPush distributor or a browser hands it out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub endpoint: String,
    /// The device's P-256 key for RFC 8291 (uncompressed point, [`P256DH_LEN`] bytes).
    #[serde(with = "crate::codec::bytes")]
    pub p256dh: Vec<u8>,
    pub auth: [u8; AUTH_LEN],
}

impl std::fmt::Debug for Subscription {
    // The endpoint is a stable pseudonym of the device and the keys let anyone push to it:
    // neither belongs in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription(..)")
    }
}

/// The id a node stores a subscription under: SHA-256 of the endpoint, first 16 bytes.
pub fn endpoint_id(endpoint: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(endpoint.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    id
}

/// Why a node refuses a push endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EndpointRefusal {
    #[error("the push endpoint is not an http:// or https:// URL")]
    NotHttp,
    #[error("the push endpoint is longer than {MAX_ENDPOINT_LEN} bytes")]
    TooLong,
    #[error("the push endpoint is not a well-formed URL")]
    Malformed,
    #[error("the push endpoint resolves to a private, loopback or link-local address")]
    PrivateAddress,
    #[error("the push endpoint's host does not resolve")]
    Unresolved,
    #[error("the subscription's keys are not a P-256 key and a 16-byte secret")]
    BadKeys,
}

/// The parts of an endpoint a node connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    pub https: bool,
    /// The host as written (brackets removed from an IPv6 literal).
    pub host: &'a str,
    pub port: u16,
}

impl Endpoint<'_> {
    /// The host if it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Checks `url` as a push endpoint: http or https, at most [`MAX_ENDPOINT_LEN`] bytes, a host,
/// no user name or password, no whitespace or control characters. An IP literal host must be
/// an address [`address_allowed`] allows; a name is checked when the driver resolves it.
pub fn check_endpoint(url: &str, allow_loopback: bool) -> Result<Endpoint<'_>, EndpointRefusal> {
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(EndpointRefusal::TooLong);
    }
    let (https, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
        (true, r)
    } else if let Some(r) = strip_prefix_ignore_case(url, "http://") {
        (false, r)
    } else {
        return Err(EndpointRefusal::NotHttp);
    };
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(EndpointRefusal::Malformed);
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() || authority.contains('@') {
        return Err(EndpointRefusal::Malformed);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or(EndpointRefusal::Malformed)?;
        let host = &v6[..end];
        host.parse::<Ipv6Addr>()
            .map_err(|_| EndpointRefusal::Malformed)?;
        (host, &v6[end + 1..])
    } else {
        match authority.find(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        }
    };
    let port = match port {
        "" => {
            if https {
                443
            } else {
                80
            }
        }
        p => p
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or(EndpointRefusal::Malformed)?,
    };
    let valid_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !valid_name(host) && host.parse::<Ipv6Addr>().is_err() {
        return Err(EndpointRefusal::Malformed);
    }
    let endpoint = Endpoint { https, host, port };
    if let Some(ip) = endpoint.ip()
        && !address_allowed(ip, allow_loopback)
    {
        return Err(EndpointRefusal::PrivateAddress);
    }
    Ok(endpoint)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Checks a whole subscription: the endpoint and the keys' shapes.
pub fn check_subscription(s: &Subscription, allow_loopback: bool) -> Result<(), EndpointRefusal> {
    check_endpoint(&s.endpoint, allow_loopback)?;
    if s.p256dh.len() != P256DH_LEN || s.p256dh[0] != 0x04 {
        return Err(EndpointRefusal::BadKeys);
    }
    Ok(())
}

/// Whether a node may connect to `ip` to deliver a wake-up: only a public unicast address, or
/// loopback when the node allows it (tests). Everything a request could be aimed at inside the
/// operator's network is refused: private, shared (CGNAT), link-local, unique-local,
/// multicast, unspecified, documentation and reserved ranges, and IPv4 inside IPv6.
pub fn address_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_loopback),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_allowed(v4, allow_loopback);
            }
            if v6.is_loopback() {
                return allow_loopback;
            }
            let s = v6.segments();
            let reserved = v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: an IPv4 address inside
                || s[0] == 0x2002 // 6to4: an IPv4 address inside
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0); // IPv4-compatible
            !reserved
        }
    }
}

fn v4_allowed(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    let o = ip.octets();
    let reserved = ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240; // reserved
    !reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed_and_refused_as_they_should_be() {
        let e = check_endpoint("https://push.example.org/wake/abc?x=1", false).unwrap();
        assert_eq!((e.https, e.host, e.port), (true, "push.example.org", 443));
        let e = check_endpoint("HTTP://push.example.org:8080", false).unwrap();
        assert_eq!((e.https, e.host, e.port), (false, "push.example.org", 8080));
        let e = check_endpoint("https://[2a01:4f8::1]:444/p", false).unwrap();
        assert_eq!((e.host, e.port), ("2a01:4f8::1", 444));

        let refused = |u: &str| check_endpoint(u, false).unwrap_err();
        assert_eq!(refused("ftp://push.example.org/"), EndpointRefusal::NotHttp);
        assert_eq!(refused("file:///etc/passwd"), EndpointRefusal::NotHttp);
        assert_eq!(refused("javascript:alert(1)"), EndpointRefusal::NotHttp);
        let long = format!("https://push.example.org/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(refused(&long), EndpointRefusal::TooLong);
        for bad in [
            "https://",
            "https:///path",
            "https://user:pw@push.example.org/",
            "https://push.example.org:0/",
            "https://push.example.org:99999/",
            "https://push.example.org:/",
            "https://push example.org/",
            "https://push.example.org/\u{1b}[2J",
            "https://[::1/",
            "https://exa%6dple.org/",
        ] {
            assert_eq!(refused(bad), EndpointRefusal::Malformed, "{bad}");
        }
        for private in [
            "http://10.1.2.3/",
            "http://192.168.0.1:8080/",
            "http://172.16.5.4/",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8090/notify/x",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert_eq!(
                refused(private),
                EndpointRefusal::PrivateAddress,
                "{private}"
            );
        }
        // Loopback only, when the node allows it: private ranges stay refused.
        assert!(check_endpoint("http://127.0.0.1:8090/notify/x", true).is_ok());
        assert!(check_endpoint("http://[::1]:8090/", true).is_ok());
        assert_eq!(
            check_endpoint("http://10.1.2.3/", true).unwrap_err(),
            EndpointRefusal::PrivateAddress
        );
    }

    #[test]
    fn only_public_unicast_addresses_are_allowed() {
        for ok in ["1.1.1.1", "93.184.216.34", "2a00:1450:4001::200e"] {
            assert!(address_allowed(ok.parse().unwrap(), false), "{ok}");
        }
        for no in [
            "127.0.0.1",
            "10.0.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::ffff:192.168.1.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::10.0.0.1",
        ] {
            assert!(!address_allowed(no.parse().unwrap(), false), "{no}");
        }
        assert!(address_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(!address_allowed("10.0.0.1".parse().unwrap(), true));
    }

    #[test]
    fn subscription_keys_must_have_their_shapes() {
        let mut s = Subscription {
            endpoint: "https://push.example.org/x".into(),
            p256dh: vec![4; P256DH_LEN],
            auth: [1; AUTH_LEN],
        };
        assert!(check_subscription(&s, false).is_ok());
        s.p256dh[0] = 2;
        assert_eq!(check_subscription(&s, false), Err(EndpointRefusal::BadKeys));
        s.p256dh = vec![4; 33];
        assert_eq!(check_subscription(&s, false), Err(EndpointRefusal::BadKeys));
        assert_eq!(format!("{s:?}"), "Subscription(..)");
    }
}
