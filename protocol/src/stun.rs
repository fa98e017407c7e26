//! STUN messages (RFC 8489) with the attributes TURN (RFC 8656) needs: the one codec between a
//! device's call and its home node's relay. Pure and total: [`Message::decode`] never panics,
//! takes at most [`MAX_MESSAGE_BYTES`] and [`MAX_ATTRIBUTES`], and refuses a length that lies.
//!
//! Integrity is MESSAGE-INTEGRITY-SHA256 only (HMAC-SHA256, 32 bytes), keyed with the
//! long-term credential's SHA-256 key (RFC 8489 §9.2.2:
//! `SHA-256(username ":" realm ":" password)`). Hestia's relay serves Hestia's devices only, so
//! the SHA-1 and MD5 variants are neither sent nor accepted.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_BYTES: usize = 20;
/// Largest STUN message read or written: a relayed media datagram (≤ 1280 bytes) and its
/// headers fit.
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// Attributes one message may carry; more is refused.
pub const MAX_ATTRIBUTES: usize = 24;
/// Longest USERNAME, REALM, NONCE and reason phrase (RFC 8489 bounds each at ~763 bytes).
pub const MAX_TEXT_ATTRIBUTE: usize = 512;
const INTEGRITY_BYTES: usize = 32;

/// Attribute types.
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
}

/// The methods Hestia's relay speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Binding,
    Allocate,
    Refresh,
    Send,
    Data,
    CreatePermission,
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Method::Binding => 0x001,
            Method::Allocate => 0x003,
            Method::Refresh => 0x004,
            Method::Send => 0x006,
            Method::Data => 0x007,
            Method::CreatePermission => 0x008,
        }
    }

    fn from_code(c: u16) -> Option<Method> {
        Some(match c {
            0x001 => Method::Binding,
            0x003 => Method::Allocate,
            0x004 => Method::Refresh,
            0x006 => Method::Send,
            0x007 => Method::Data,
            0x008 => Method::CreatePermission,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Error codes used by the relay (RFC 8489 §14.8, RFC 8656 §18).
pub mod code {
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const FORBIDDEN: u16 = 403;
    pub const ALLOCATION_MISMATCH: u16 = 437;
    pub const STALE_NONCE: u16 = 438;
    pub const UNSUPPORTED_TRANSPORT: u16 = 442;
    pub const ALLOCATION_QUOTA: u16 = 486;
    pub const INSUFFICIENT_CAPACITY: u16 = 508;
}

/// One attribute, decoded. Unknown attributes are kept as [`Attribute::Other`] (their type
/// only): comprehension-required ones make a request fail with 400, as RFC 8489 asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    Username(String),
    Realm(String),
    Nonce(String),
    ErrorCode {
        code: u16,
        reason: String,
    },
    Lifetime(u32),
    XorPeerAddress(SocketAddr),
    XorRelayedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    Data(Vec<u8>),
    /// The IP protocol number asked for (17 is UDP).
    RequestedTransport(u8),
    Integrity([u8; INTEGRITY_BYTES]),
    Other(u16),
}

/// A STUN message. `integrity_at` is the offset of the MESSAGE-INTEGRITY-SHA256 attribute in
/// the bytes it was decoded from, if it had one (see [`Message::check_integrity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub class: Class,
    pub method: Method,
    pub txid: [u8; 12],
    pub attributes: Vec<Attribute>,
    integrity_at: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN message")]
    NotStun,
    #[error("the STUN message is truncated or its lengths disagree")]
    Truncated,
    #[error("the STUN message is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("the STUN message has more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("unknown STUN method {0:#x}")]
    UnknownMethod(u16),
    #[error("malformed STUN attribute {0:#06x}")]
    BadAttribute(u16),
}

/// Whether `bytes` look like a STUN message (first two bits zero and the magic cookie): how a
/// socket shared with other traffic tells them apart (RFC 7983).
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES
        && bytes[0] & 0xC0 == 0
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == MAGIC_COOKIE
}

/// The long-term credential key (RFC 8489 §9.2.2, SHA-256 password algorithm).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

impl Message {
    pub fn new(class: Class, method: Method, txid: [u8; 12]) -> Message {
        Message {
            class,
            method,
            txid,
            attributes: Vec::new(),
            integrity_at: None,
        }
    }

    /// A response (success or error) to `request`, with its transaction id.
    pub fn reply(request: &Message, class: Class) -> Message {
        Message::new(class, request.method, request.txid)
    }

    pub fn with(mut self, a: Attribute) -> Message {
        self.attributes.push(a);
        self
    }

    pub fn error_code(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, .. } => Some(*code),
            _ => None,
        })
    }

    pub fn username(&self) -> Option<&str> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Username(u) => Some(u.as_str()),
            _ => None,
        })
    }

    pub fn realm(&self) -> Option<&str> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Realm(r) => Some(r.as_str()),
            _ => None,
        })
    }

    pub fn nonce(&self) -> Option<&str> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Nonce(n) => Some(n.as_str()),
            _ => None,
        })
    }

    pub fn lifetime(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Lifetime(l) => Some(*l),
            _ => None,
        })
    }

    pub fn data(&self) -> Option<&[u8]> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Data(d) => Some(d.as_slice()),
            _ => None,
        })
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may name several).
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.attributes.iter().filter_map(|a| match a {
            Attribute::XorPeerAddress(p) => Some(*p),
            _ => None,
        })
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::XorRelayedAddress(p) => Some(*p),
            _ => None,
        })
    }

    pub fn requested_transport(&self) -> Option<u8> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::RequestedTransport(p) => Some(*p),
            _ => None,
        })
    }

    /// Unknown attributes in the comprehension-required range (below 0x8000).
    pub fn unknown_required(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| matches!(a, Attribute::Other(t) if *t < 0x8000))
    }

    /// Encodes the message; with `key`, MESSAGE-INTEGRITY-SHA256 goes last (any
    /// [`Attribute::Integrity`] in `attributes` is skipped).
    pub fn encode(&self, key: Option<&[u8; 32]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let ty = type_code(self.class, self.method);
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.txid);
        for a in &self.attributes {
            encode_attribute(&mut out, a, &self.txid);
        }
        if let Some(key) = key {
            let len = (out.len() - HEADER_BYTES + 4 + INTEGRITY_BYTES) as u16;
            out[2..4].copy_from_slice(&len.to_be_bytes());
            let tag = hmac_sha256(key, &out);
            put_attribute(&mut out, attr::MESSAGE_INTEGRITY_SHA256, &tag);
        }
        let len = (out.len() - HEADER_BYTES) as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes one message. Attributes after MESSAGE-INTEGRITY-SHA256 are ignored, as RFC
    /// 8489 says (they are not covered by it).
    pub fn decode(bytes: &[u8]) -> Result<Message, StunError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(StunError::TooLarge);
        }
        if !is_stun(bytes) {
            return Err(StunError::NotStun);
        }
        let ty = u16::from_be_bytes([bytes[0], bytes[1]]);
        let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER_BYTES + len != bytes.len() {
            return Err(StunError::Truncated);
        }
        let (class, method) = split_type(ty)?;
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&bytes[8..20]);
        let mut m = Message::new(class, method, txid);
        let mut at = HEADER_BYTES;
        while at < bytes.len() {
            if m.attributes.len() >= MAX_ATTRIBUTES {
                return Err(StunError::TooManyAttributes);
            }
            let head = bytes.get(at..at + 4).ok_or(StunError::Truncated)?;
            let t = u16::from_be_bytes([head[0], head[1]]);
            let l = u16::from_be_bytes([head[2], head[3]]) as usize;
            let value = bytes.get(at + 4..at + 4 + l).ok_or(StunError::Truncated)?;
            let padded = (l + 3) & !3;
            if at + 4 + padded > bytes.len() {
                return Err(StunError::Truncated);
            }
            let a = decode_attribute(t, value, &txid)?;
            if t == attr::MESSAGE_INTEGRITY_SHA256 {
                m.integrity_at = Some(at);
                m.attributes.push(a);
                break;
            }
            m.attributes.push(a);
            at += 4 + padded;
        }
        Ok(m)
    }

    /// Whether `bytes` (which this message was decoded from) carry a valid
    /// MESSAGE-INTEGRITY-SHA256 under `key`. Constant time in the tag.
    pub fn check_integrity(&self, bytes: &[u8], key: &[u8; 32]) -> bool {
        let (Some(at), Some(Attribute::Integrity(tag))) = (
            self.integrity_at,
            self.attributes
                .iter()
                .find(|a| matches!(a, Attribute::Integrity(_))),
        ) else {
            return false;
        };
        let Some(covered) = bytes.get(..at) else {
            return false;
        };
        let mut head = covered.to_vec();
        let len = (at - HEADER_BYTES + 4 + INTEGRITY_BYTES) as u16;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
        mac.update(&head);
        mac.verify_slice(tag).is_ok()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn type_code(class: Class, method: Method) -> u16 {
    let m = method.code();
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(ty: u16) -> Result<(Class, Method), StunError> {
    let c = ((ty >> 4) & 1) | ((ty >> 7) & 2);
    let m = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    let class = match c {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    let method = Method::from_code(m).ok_or(StunError::UnknownMethod(m))?;
    Ok((class, method))
}

fn put_attribute(out: &mut Vec<u8>, t: u16, value: &[u8]) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn encode_attribute(out: &mut Vec<u8>, a: &Attribute, txid: &[u8; 12]) {
    match a {
        Attribute::Username(s) => put_attribute(out, attr::USERNAME, s.as_bytes()),
        Attribute::Realm(s) => put_attribute(out, attr::REALM, s.as_bytes()),
        Attribute::Nonce(s) => put_attribute(out, attr::NONCE, s.as_bytes()),
        Attribute::ErrorCode { code, reason } => {
            let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
            v.extend_from_slice(reason.as_bytes());
            put_attribute(out, attr::ERROR_CODE, &v);
        }
        Attribute::Lifetime(l) => put_attribute(out, attr::LIFETIME, &l.to_be_bytes()),
        Attribute::XorPeerAddress(p) => {
            put_attribute(out, attr::XOR_PEER_ADDRESS, &xor_address(*p, txid))
        }
        Attribute::XorRelayedAddress(p) => {
            put_attribute(out, attr::XOR_RELAYED_ADDRESS, &xor_address(*p, txid))
        }
        Attribute::XorMappedAddress(p) => {
            put_attribute(out, attr::XOR_MAPPED_ADDRESS, &xor_address(*p, txid))
        }
        Attribute::Data(d) => put_attribute(out, attr::DATA, d),
        Attribute::RequestedTransport(p) => {
            put_attribute(out, attr::REQUESTED_TRANSPORT, &[*p, 0, 0, 0])
        }
        Attribute::Integrity(_) | Attribute::Other(_) => {}
    }
}

fn text(t: u16, v: &[u8]) -> Result<String, StunError> {
    if v.len() > MAX_TEXT_ATTRIBUTE {
        return Err(StunError::BadAttribute(t));
    }
    String::from_utf8(v.to_vec()).map_err(|_| StunError::BadAttribute(t))
}

fn decode_attribute(t: u16, v: &[u8], txid: &[u8; 12]) -> Result<Attribute, StunError> {
    let bad = StunError::BadAttribute(t);
    Ok(match t {
        attr::USERNAME => Attribute::Username(text(t, v)?),
        attr::REALM => Attribute::Realm(text(t, v)?),
        attr::NONCE => Attribute::Nonce(text(t, v)?),
        attr::ERROR_CODE => {
            if v.len() < 4 || v[2] > 7 || v[3] > 99 {
                return Err(bad);
            }
            Attribute::ErrorCode {
                code: v[2] as u16 * 100 + v[3] as u16,
                reason: text(t, &v[4..])?,
            }
        }
        attr::LIFETIME => Attribute::Lifetime(u32::from_be_bytes(v.try_into().map_err(|_| bad)?)),
        attr::XOR_PEER_ADDRESS => Attribute::XorPeerAddress(unxor_address(t, v, txid)?),
        attr::XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(unxor_address(t, v, txid)?),
        attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(unxor_address(t, v, txid)?),
        attr::DATA => Attribute::Data(v.to_vec()),
        attr::REQUESTED_TRANSPORT => {
            if v.len() != 4 {
                return Err(bad);
            }
            Attribute::RequestedTransport(v[0])
        }
        attr::MESSAGE_INTEGRITY_SHA256 => Attribute::Integrity(v.try_into().map_err(|_| bad)?),
        other => Attribute::Other(other),
    })
}

fn xor_address(p: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let port = p.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = Vec::with_capacity(20);
    match p.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 1]);
            v.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ MAGIC_COOKIE;
            v.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 2]);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(txid);
            let o = ip.octets();
            v.extend((0..16).map(|i| o[i] ^ mask[i]));
        }
    }
    v
}

fn unxor_address(t: u16, v: &[u8], txid: &[u8; 12]) -> Result<SocketAddr, StunError> {
    let bad = StunError::BadAttribute(t);
    if v.len() < 4 {
        return Err(bad);
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (1, 8) => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            IpAddr::V4(Ipv4Addr::from(x))
        }
        (2, 20) => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(txid);
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: [u8; 12] = [7; 12];

    #[test]
    fn a_message_round_trips_with_every_attribute() {
        let peer: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:3478".parse().unwrap();
        let m = Message::new(Class::Error, Method::Allocate, TX)
            .with(Attribute::Username("u:1".into()))
            .with(Attribute::Realm("hestia".into()))
            .with(Attribute::Nonce("n0nce".into()))
            .with(Attribute::ErrorCode {
                code: 438,
                reason: "Stale Nonce".into(),
            })
            .with(Attribute::Lifetime(600))
            .with(Attribute::XorPeerAddress(peer))
            .with(Attribute::XorRelayedAddress(v6))
            .with(Attribute::XorMappedAddress(peer))
            .with(Attribute::Data(vec![1, 2, 3, 4, 5]))
            .with(Attribute::RequestedTransport(17));
        let bytes = m.encode(None);
        assert!(is_stun(&bytes));
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        for class in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            for method in [
                Method::Binding,
                Method::Allocate,
                Method::Refresh,
                Method::Send,
                Method::Data,
                Method::CreatePermission,
            ] {
                let b = Message::new(class, method, TX).encode(None);
                let d = Message::decode(&b).unwrap();
                assert_eq!((d.class, d.method), (class, method));
            }
        }
        // The RFC's own encodings: an Allocate request is 0x0003, a Data indication 0x0017,
        // an Allocate error 0x0113.
        assert_eq!(type_code(Class::Request, Method::Allocate), 0x0003);
        assert_eq!(type_code(Class::Indication, Method::Data), 0x0017);
        assert_eq!(type_code(Class::Error, Method::Allocate), 0x0113);
    }

    #[test]
    fn integrity_holds_only_under_the_right_key_and_for_the_bytes_covered() {
        let key = long_term_key("alice", "hestia", "secret");
        let m = Message::new(Class::Request, Method::Refresh, TX)
            .with(Attribute::Username("alice".into()))
            .with(Attribute::Lifetime(0));
        let bytes = m.encode(Some(&key));
        let d = Message::decode(&bytes).unwrap();
        assert!(d.check_integrity(&bytes, &key));
        assert!(!d.check_integrity(&bytes, &long_term_key("alice", "hestia", "guess")));
        // Any flipped bit before the tag breaks it; no tag at all is not valid either.
        for i in HEADER_BYTES..bytes.len() - 36 {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok(d) = Message::decode(&b) {
                assert!(!d.check_integrity(&b, &key), "bit {i}");
            }
        }
        let plain = m.encode(None);
        assert!(
            !Message::decode(&plain)
                .unwrap()
                .check_integrity(&plain, &key)
        );
    }

    #[test]
    fn lying_lengths_truncation_and_floods_of_attributes_are_refused() {
        let good = Message::new(Class::Indication, Method::Send, TX)
            .with(Attribute::Data(vec![9; 10]))
            .encode(None);
        for cut in 0..good.len() {
            assert!(Message::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[2..4].copy_from_slice(&400u16.to_be_bytes());
        assert_eq!(Message::decode(&lying), Err(StunError::Truncated));
        let mut attr_lies = good.clone();
        attr_lies[22..24].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(Message::decode(&attr_lies), Err(StunError::Truncated));
        let mut many = Message::new(Class::Request, Method::Binding, TX);
        for _ in 0..MAX_ATTRIBUTES + 1 {
            many = many.with(Attribute::Lifetime(1));
        }
        assert_eq!(
            Message::decode(&many.encode(None)),
            Err(StunError::TooManyAttributes)
        );
        assert_eq!(
            Message::decode(&[0u8; MAX_MESSAGE_BYTES + 4]),
            Err(StunError::TooLarge)
        );
        // RTP and DTLS are not STUN.
        assert!(!is_stun(&[0x80; 40]));
        assert!(!is_stun(&[0x16; 40]));
    }
}
