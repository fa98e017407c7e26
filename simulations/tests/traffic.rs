//! Files, push wake-ups and call signalling in the model, through the production relay core.

use hestia_simulations::{Outcome, Scenario, run};

/// Small, fault-free and lossless: what differs between runs is what each test changes.
fn base() -> Scenario {
    Scenario {
        name: "traffic".into(),
        nodes: 4,
        users_per_node: 5,
        duration_s: 900.0,
        drain_s: 3600.0,
        messages_per_user_per_hour: 6.0,
        mean_text_bytes: 80.0,
        online_fraction: 1.0,
        link_loss: 0.0,
        sample_every_s: 30.0,
        ..Scenario::default()
    }
}

fn go(sc: Scenario, seed: u64) -> Outcome {
    run(sc, seed, |_, _| true)
}

#[test]
fn files_cross_the_federation_are_fetched_whole_and_leave_their_holders() {
    let with = Scenario {
        files_per_user_per_hour: 4.0,
        file_median_bytes: 300_000.0,
        // Slow links and a sample a second, so transfers are caught in the time series.
        device_bandwidth_mbps: 2.0,
        sample_every_s: 1.0,
        ..base()
    };
    let o = go(with, 3);
    let f = &o.summary.files;
    assert!(f.sent >= 10, "{f:?}");
    assert_eq!(f.fetched, f.sent, "{f:?}");
    assert_eq!(f.pending + f.expired + f.refused, 0, "{f:?}");
    // Sealed and padded, every byte goes up once and comes down once; those whose recipient
    // is on another node cross between nodes too.
    assert!(f.chunk_bytes_uploaded >= f.bytes_sent, "{f:?}");
    assert_eq!(f.chunk_bytes_downloaded, f.chunk_bytes_uploaded, "{f:?}");
    assert!(f.chunk_bytes_between_nodes > 0, "{f:?}");
    assert!(
        f.chunk_bytes_between_nodes < f.chunk_bytes_downloaded,
        "{f:?}"
    );
    assert!(f.upload.p50_ms > 0.0 && f.send_to_fetched.p50_ms > f.upload.p50_ms);
    // A holding node learns the recipient only of files it serves to its own users.
    assert!(
        f.recipient_known_to_holding_node > 0.0 && f.recipient_known_to_holding_node < 0.6,
        "{f:?}"
    );
    let fetching: usize = o
        .operators
        .iter()
        .map(|v| v.uploader_to_fetching_node_pairs)
        .sum();
    assert!(fetching > 0);
    // Files were held while they moved, and none is held once all were fetched.
    assert!(o.series.iter().any(|s| s.file_bytes > 0));
    assert_eq!(o.series.last().unwrap().file_bytes, 0);
    // Files come from a stream of their own: the text messages are the same ones.
    let without = go(base(), 3);
    assert_eq!(
        without.summary.messages_sent, o.summary.messages_sent,
        "turning files on changed the messages"
    );
    assert_eq!(without.summary.files.sent, 0);
}

#[test]
fn a_file_announced_after_its_expiry_is_not_fetched_and_its_chunks_go() {
    let sc = Scenario {
        files_per_user_per_hour: 60.0,
        file_median_bytes: 50_000.0,
        file_ttl_s: 60.0,
        // Away most of the time, back after minutes: many files expire before their recipient
        // looks, some are fetched in time.
        online_fraction: 0.2,
        session_mean_s: 120.0,
        ..base()
    };
    let o = go(sc, 5);
    let f = &o.summary.files;
    assert!(f.expired > 0, "{f:?}");
    assert!(f.fetched > 0, "{f:?}");
    assert_eq!(
        o.series.last().unwrap().file_bytes,
        0,
        "expired chunks stay held"
    );
}

#[test]
fn phones_asleep_are_woken_by_push_and_get_their_mail_in_seconds() {
    let away = Scenario {
        online_fraction: 0.05,
        session_mean_s: 300.0,
        messages_per_user_per_hour: 12.0,
        ..base()
    };
    let phones = go(
        Scenario {
            phone_fraction: 1.0,
            ..away.clone()
        },
        7,
    );
    let desktops = go(away, 7);
    let p = &phones.summary.push;
    assert_eq!(p.phones, 20);
    assert!(p.wake_ups_sent > 0, "{p:?}");
    // Coalesced: at most one wake-up per envelope, and fewer when mail comes in bursts.
    assert!(p.wake_ups_sent <= phones.summary.messages_sent, "{p:?}");
    let to_phones = p.latency_to_phones.p50_ms;
    let to_desktops = desktops.summary.push.latency_to_others.p50_ms;
    assert!(to_phones < 5_000.0, "{p:?}");
    assert!(to_desktops > 60_000.0, "{to_desktops}");
    // Every wake-up left as the arrival that armed it was stored.
    assert_eq!(p.arrivals_timed_within_1s, 1.0, "{p:?}");
    assert!(p.send_to_wake.p50_ms < 3_000.0, "{p:?}");
}

#[test]
fn a_wake_up_delay_hides_arrival_times_from_the_push_service_at_a_cost_in_latency() {
    let sc = Scenario {
        phone_fraction: 1.0,
        online_fraction: 0.05,
        session_mean_s: 300.0,
        messages_per_user_per_hour: 12.0,
        ..base()
    };
    let prompt = go(sc.clone(), 9);
    let delayed = go(
        Scenario {
            push_max_delay_ms: 30_000,
            ..sc
        },
        9,
    );
    let (a, b) = (&prompt.summary.push, &delayed.summary.push);
    assert!(b.arrivals_timed_within_1s < 0.2, "{b:?}");
    assert!(b.arrival_to_wake_request.p50_ms > 5_000.0, "{b:?}");
    assert!(b.latency_to_phones.p50_ms > a.latency_to_phones.p50_ms + 5_000.0);
    // The same messages either way.
    assert_eq!(prompt.summary.messages_sent, delayed.summary.messages_sent);
}

#[test]
fn calls_ring_within_a_second_when_the_callee_is_there_and_are_missed_when_not() {
    let calls = Scenario {
        calls_per_user_per_hour: 6.0,
        call_mean_s: 30.0,
        ..base()
    };
    let o = go(calls.clone(), 11);
    let c = &o.summary.calls;
    assert!(c.placed >= 10, "{c:?}");
    assert_eq!(c.missed_not_reached, 0, "{c:?}");
    assert_eq!(c.rang + c.busy, c.placed, "{c:?}");
    assert!(c.connected > 0 && c.connected <= c.rang, "{c:?}");
    assert!(c.ring.p99_ms < 1_000.0, "{c:?}");
    assert!(c.connect.p50_ms > c.ring.p50_ms, "{c:?}");
    // Mostly away, on desktops that do not wake: most offers arrive too late.
    let away = Scenario {
        online_fraction: 0.1,
        session_mean_s: 120.0,
        ..calls.clone()
    };
    let missed = go(away.clone(), 11).summary.calls;
    assert!(missed.missed_not_reached > missed.rang, "{missed:?}");
    // The same people on phones that push wakes: calls to sleeping phones ring.
    let woken = go(
        Scenario {
            phone_fraction: 1.0,
            ..away
        },
        11,
    )
    .summary
    .calls;
    assert!(woken.to_sleeping_phones > 0, "{woken:?}");
    assert!(
        woken.rang_sleeping_phones * 10 >= woken.to_sleeping_phones * 8,
        "{woken:?}"
    );
}

#[test]
fn files_push_and_calls_replay_byte_for_byte() {
    let sc = Scenario {
        files_per_user_per_hour: 2.0,
        phone_fraction: 0.5,
        calls_per_user_per_hour: 2.0,
        online_fraction: 0.3,
        crashes: vec![hestia_simulations::scenario::Crash {
            node: 1,
            at_s: 300.0,
            down_s: 60.0,
            disk_loss: false,
        }],
        ..base()
    };
    let json = |o: &Outcome| serde_json::to_string(&o.summary).unwrap();
    let (a, b) = (go(sc.clone(), 13), go(sc, 13));
    assert_eq!(json(&a), json(&b));
    assert!(a.summary.files.sent > 0 && a.summary.calls.placed > 0);
    assert!(a.summary.push.wake_ups_sent > 0);
}
