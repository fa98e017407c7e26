//! The per-address connection limit on a real node (`node/src/ip_limits.rs`), with loopback
//! counted like any other address (`--limit-loopback`; normally loopback is exempt).

use hestia_tests::Net;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

/// Whether the node closed `s` (EOF or reset) within `wait`; false if it is still open.
fn closed_by_node(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn one_address_gets_64_inbound_connections_and_a_device_gets_in_once_they_go() {
    let net = Net::start_with(1, &["--limit-loopback"]);
    net.account("alice", 0);
    let addr = net.node_addr(0);
    let port = addr.split('/').nth(4).unwrap();
    let target = format!("127.0.0.1:{port}");
    // Connections that open TCP and say nothing, as a flood would: 70 from one address.
    let mut conns: Vec<TcpStream> = (0..70)
        .map(|_| TcpStream::connect(&target).unwrap())
        .collect();
    // The node accepts them as it polls; those past the limit it closes before any handshake.
    let start = std::time::Instant::now();
    let mut open: Vec<TcpStream> = Vec::new();
    while start.elapsed() < Duration::from_secs(10) {
        let mut still = Vec::new();
        for mut c in conns.drain(..) {
            if !closed_by_node(&mut c, Duration::from_millis(10)) {
                still.push(c);
            }
        }
        conns = still;
        if conns.len() <= 64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    open.append(&mut conns);
    // 64 in all from this address (the bootstrap node's own connection may be one of them).
    assert!(
        (62..=64).contains(&open.len()),
        "{} of 70 connections left open",
        open.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        open.iter_mut()
            .all(|c| !closed_by_node(c, Duration::from_millis(10))),
        "the ones within the limit stay open"
    );
    let held = open;
    // Meanwhile a device from the same address is refused too, with one plain line.
    let r = net.run("alice", &["status"]);
    assert!(!r.status.success());
    // Once they go, it gets in.
    drop(held);
    let start = std::time::Instant::now();
    while !net.run("alice", &["status"]).status.success() {
        assert!(
            start.elapsed() < hestia_tests::WAIT,
            "the device never got in once the connections went"
        );
    }
}
