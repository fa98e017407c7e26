//! `hestia bench --only sessions`: the per-message cost of a running Double Ratchet session
//! (encrypt and decrypt, 256 B and 4 KiB) and of session set-up, beside raw XChaCha20-Poly1305
//! of the same size and one X25519, measured in the same run. Each figure is the median of
//! several timed rounds; output is a Markdown table for docs/benchmarks.md.

use anyhow::Result;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::session::prekeys::{PrekeyBundle, PrekeySecrets};
use hestia_protocol::session::ratchet::Session;
use hestia_protocol::session::x3dh;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 7;
const NOW: u64 = 1_700_000_000_000;

/// Median nanoseconds per operation of `f`, run `n` times per round.
fn ns_per_op(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn pair(rng: &mut StdRng) -> (Session, Session) {
    let alice = IdentityKey::generate(rng);
    let bob = IdentityKey::generate(rng);
    let mut pk = PrekeySecrets::new(rng, &bob, NOW);
    let otk = pk.generate_one_time(rng, 1, 0)[0];
    let bundle = PrekeyBundle {
        identity: bob.user_id(),
        signed_prekey: pk.current_signed().clone(),
        one_time: Some(otk),
    };
    let (ag, header) = x3dh::initiate(rng, &alice, &bundle).expect("bundle verifies");
    let mut a = Session::initiate(rng, ag, bob.user_id(), bundle.signed_prekey.key, header)
        .expect("session");
    let first = a.encrypt(rng, b"hi").expect("encrypt");
    let p = first.prekey.clone().expect("prekey header");
    let (ag, spk) = x3dh::respond(&bob, &pk, &p).expect("respond");
    let mut b = Session::respond(ag, alice.user_id(), spk, p.ephemeral);
    b.decrypt(rng, &first, NOW).expect("first message");
    (a, b)
}

pub fn run() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    let mut rows = Vec::new();
    // The header-encryption variant seals a 40-byte header with a second AEAD per message.
    let header_cipher = XChaCha20Poly1305::new(&[8u8; 32].into());
    let header = [4u8; 40];
    let raw_header = ns_per_op(20_000, |_| {
        black_box(
            header_cipher
                .encrypt(
                    &XNonce::from([2u8; 24]),
                    Payload {
                        msg: &header,
                        aad: &[1u8; 66],
                    },
                )
                .expect("encrypt"),
        );
    });
    for size in [256usize, 4096] {
        let n = if size == 256 { 20_000 } else { 5_000 };
        let plain = vec![7u8; size];
        let cipher = XChaCha20Poly1305::new(&[9u8; 32].into());
        let nonce = XNonce::from([3u8; 24]);
        let aad = [1u8; 66 + 80];
        let raw_enc = ns_per_op(n, |_| {
            black_box(
                cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &plain,
                            aad: &aad,
                        },
                    )
                    .expect("encrypt"),
            );
        });
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("encrypt");
        let raw_dec = ns_per_op(n, |_| {
            black_box(
                cipher
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: &sealed,
                            aad: &aad,
                        },
                    )
                    .expect("decrypt"),
            );
        });
        let (mut a, _) = pair(&mut rng);
        let enc = ns_per_op(n, |_| {
            black_box(a.encrypt(&mut rng, &plain).expect("encrypt"));
        });
        // Decrypt a stream encrypted in advance, in order, one chain (no DH step), on a fresh
        // pair (the encrypt rounds moved the first one far ahead of its peer).
        let (mut a, mut b) = pair(&mut rng);
        let msgs: Vec<_> = (0..n * ROUNDS)
            .map(|_| a.encrypt(&mut rng, &plain).expect("encrypt"))
            .collect();
        let mut rng2 = StdRng::seed_from_u64(2);
        let mut next = 0;
        let dec = ns_per_op(n, |_| {
            black_box(b.decrypt(&mut rng2, &msgs[next], NOW).expect("decrypt"));
            next += 1;
        });
        rows.push((size, raw_enc, raw_dec, enc, dec));
    }
    let x = x25519_dalek::StaticSecret::from([5u8; 32]);
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([6u8; 32]));
    let one_dh = ns_per_op(5_000, |_| {
        black_box(x.diffie_hellman(&peer));
    });
    // Set-up: the initiator checks the bundle, runs its half of X3DH and encrypts the first
    // message; the responder runs its half and decrypts it. Identities and prekeys exist
    // beforehand, as they do on real devices.
    let alice = IdentityKey::generate(&mut rng);
    let bob = IdentityKey::generate(&mut rng);
    let mut pk = PrekeySecrets::new(&mut rng, &bob, NOW);
    let otk = pk.generate_one_time(&mut rng, 1, 0)[0];
    let bundle = PrekeyBundle {
        identity: bob.user_id(),
        signed_prekey: pk.current_signed().clone(),
        one_time: Some(otk),
    };
    let setup = ns_per_op(300, |_| {
        let (ag, header) = x3dh::initiate(&mut rng, &alice, &bundle).expect("bundle verifies");
        let mut a = Session::initiate(
            &mut rng,
            ag,
            bob.user_id(),
            bundle.signed_prekey.key,
            header,
        )
        .expect("session");
        let first = a.encrypt(&mut rng, b"hi").expect("encrypt");
        let p = first.prekey.clone().expect("prekey header");
        let (ag, spk) = x3dh::respond(&bob, &pk, &p).expect("respond");
        let mut b = Session::respond(ag, alice.user_id(), spk, p.ephemeral);
        black_box(b.decrypt(&mut rng, &first, NOW).expect("first message"));
    });
    // A ratchet step: a reply under a new ratchet key (two X25519 and two root KDFs each side).
    let (mut a, mut b) = pair(&mut rng);
    let step = ns_per_op(2_000, |_| {
        let m = b.encrypt(&mut rng, b"ping").expect("encrypt");
        a.decrypt(&mut rng, &m, NOW).expect("decrypt");
        let r = a.encrypt(&mut rng, b"pong").expect("encrypt");
        b.decrypt(&mut rng, &r, NOW).expect("decrypt");
    }) / 2.0;

    println!("| measurement | time per operation | ratio to baseline |");
    println!("| --- | --- | --- |");
    println!(
        "| raw XChaCha20-Poly1305 encrypt, 40 B (a ratchet header) | {raw_header:.0} ns | baseline |"
    );
    for (size, raw_enc, raw_dec, enc, dec) in rows {
        println!("| raw XChaCha20-Poly1305 encrypt, {size} B | {raw_enc:.0} ns | baseline |");
        println!("| raw XChaCha20-Poly1305 decrypt, {size} B | {raw_dec:.0} ns | baseline |");
        println!(
            "| session encrypt in a chain, {size} B | {enc:.0} ns | {:.2}× raw encrypt; {:.2}× raw encrypt + header AEAD |",
            enc / raw_enc,
            enc / (raw_enc + raw_header)
        );
        println!(
            "| session decrypt in a chain, {size} B | {dec:.0} ns | {:.2}× raw decrypt; {:.2}× raw decrypt + header AEAD |",
            dec / raw_dec,
            dec / (raw_dec + raw_header)
        );
    }
    println!("| one X25519 | {one_dh:.0} ns | baseline |");
    println!(
        "| message with a DH ratchet step (send + receive) | {step:.0} ns | {:.1}× one X25519 |",
        step / one_dh
    );
    println!(
        "| session set-up: bundle signature check, X3DH both halves, first message each side | {setup:.0} ns | {:.1}× one X25519 |",
        setup / one_dh
    );
    Ok(())
}
