//! One side of a Hestia session driven over standard input, for the cross-check against the
//! PyPI `x3dh` and `doubleratchet` packages (tests/python/crosscheck.py). One JSON object per
//! line in, one per line out; bytes are hex. Uses only the protocol crate's public API.
//!
//! Requests: `{"op":"bundle"}`, `{"op":"initiate","bundle":{..}}`, `{"op":"encrypt","text":hex}`,
//! `{"op":"decrypt","message":{..}}`, `{"op":"stored"}` (reload the session from its stored form).

use hestia_protocol::identity::{IdentityKey, Sig, UserId};
use hestia_protocol::session::prekeys::{PrekeyBundle, PrekeySecrets, SignedPrekey};
use hestia_protocol::session::ratchet::{RatchetMessage, Session};
use hestia_protocol::session::x3dh::{self, PrekeyHeader};
use rand::SeedableRng;
use serde_json::{Value, json};
use std::io::{BufRead, Write};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key(v: &Value) -> [u8; 32] {
    unhex(v.as_str().expect("hex string"))
        .try_into()
        .expect("32 bytes")
}

fn opt_key(v: &Value) -> Option<[u8; 32]> {
    if v.is_null() { None } else { Some(key(v)) }
}

fn prekey_json(p: &PrekeyHeader) -> Value {
    json!({
        "identity": hex(p.identity.as_bytes()),
        "ephemeral": hex(&p.ephemeral),
        "signed_prekey": hex(&p.signed_prekey),
        "one_time": p.one_time.map(|k| hex(&k)),
    })
}

fn main() {
    let now = 1_700_000_000_000u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x4e57_1a00);
    let me = IdentityKey::generate(&mut rng);
    let mut prekeys = PrekeySecrets::new(&mut rng, &me, now);
    let otk = prekeys.generate_one_time(&mut rng, 1, 0)[0];
    let mut session: Option<Session> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let req: Value = serde_json::from_str(&line.expect("stdin")).expect("json request");
        let resp = match req["op"].as_str().expect("op") {
            "bundle" => {
                let spk = prekeys.current_signed();
                json!({
                    "identity": hex(me.user_id().as_bytes()),
                    "signed_prekey": hex(&spk.key),
                    "signature": hex(&spk.signature.to_bytes()),
                    "one_time": hex(&otk),
                })
            }
            "initiate" => {
                let b = &req["bundle"];
                let sig_bytes: [u8; 64] = unhex(b["signature"].as_str().unwrap())
                    .try_into()
                    .expect("64-byte signature");
                let sig = Sig::from_bytes(&sig_bytes);
                let bundle = PrekeyBundle {
                    identity: UserId(key(&b["identity"])),
                    signed_prekey: SignedPrekey {
                        key: key(&b["signed_prekey"]),
                        signature: sig,
                    },
                    one_time: opt_key(&b["one_time"]),
                };
                match x3dh::initiate(&mut rng, &me, &bundle) {
                    Ok((agreement, header)) => {
                        session = Some(
                            Session::initiate(
                                &mut rng,
                                agreement,
                                bundle.identity,
                                bundle.signed_prekey.key,
                                header,
                            )
                            .expect("initiate"),
                        );
                        json!({})
                    }
                    Err(e) => json!({ "error": format!("{e:?}") }),
                }
            }
            "encrypt" => {
                let s = session.as_mut().expect("a session");
                let text = unhex(req["text"].as_str().unwrap());
                match s.encrypt(&mut rng, &text) {
                    Ok(m) => json!({
                        "prekey": m.prekey.as_ref().map(prekey_json),
                        "header": hex(&m.header),
                        "ciphertext": hex(&m.ciphertext),
                    }),
                    Err(e) => json!({ "error": format!("{e:?}") }),
                }
            }
            "decrypt" => {
                let m = &req["message"];
                let prekey = if m["prekey"].is_null() {
                    None
                } else {
                    let p = &m["prekey"];
                    Some(PrekeyHeader {
                        identity: UserId(key(&p["identity"])),
                        ephemeral: key(&p["ephemeral"]),
                        signed_prekey: key(&p["signed_prekey"]),
                        one_time: opt_key(&p["one_time"]),
                    })
                };
                let msg = RatchetMessage {
                    prekey: prekey.clone(),
                    header: unhex(m["header"].as_str().unwrap()),
                    ciphertext: unhex(m["ciphertext"].as_str().unwrap()),
                };
                let fresh = match (&prekey, &session) {
                    (Some(p), Some(s)) => s.base_key() != &p.ephemeral,
                    (Some(_), None) => true,
                    _ => false,
                };
                let result = if fresh {
                    let p = prekey.expect("prekey header");
                    x3dh::respond(&me, &prekeys, &p).and_then(|(agreement, spk)| {
                        let mut s = Session::respond(agreement, p.identity, spk, p.ephemeral);
                        let plain = s.decrypt(&mut rng, &msg, now)?;
                        if let Some(k) = p.one_time {
                            prekeys.consume_one_time(&k);
                        }
                        session = Some(s);
                        Ok(plain)
                    })
                } else {
                    session
                        .as_mut()
                        .expect("a session")
                        .decrypt(&mut rng, &msg, now)
                };
                match result {
                    Ok(plain) => json!({ "plaintext": hex(&plain) }),
                    Err(e) => json!({ "error": format!("{e:?}") }),
                }
            }
            "stored" => {
                let s = session.as_ref().expect("a session");
                session = Some(Session::from_stored(&s.to_stored()).expect("stored form"));
                json!({})
            }
            other => json!({ "error": format!("unknown op {other}") }),
        };
        writeln!(out, "{resp}").expect("stdout");
        out.flush().expect("stdout");
    }
}
