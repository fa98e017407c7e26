//! Deterministic network simulations of a Hestia federation, for researchers.
//!
//! The simulator drives the production relay core ([`hestia_node::relay::Core`]) of every node
//! under a discrete-event scheduler with a virtual clock and one seeded RNG; network, devices and
//! storage ([`hestia_store::node::MemNodeStore`], the same interface as RocksDB) are simulated.
//! The same scenario and seed give byte-identical results.
//!
//! - [`scenario`]: what a run simulates, read from TOML.
//! - [`sim`]: the engine and its results.
//! - [`write_results`]: `summary.json`, `timeseries.csv`, `operators.csv` and `latency_cdf.svg`.

pub mod scenario;
pub mod sim;

use std::fmt::Write as _;
use std::path::Path;

pub use scenario::Scenario;
pub use sim::{Outcome, Sim, Summary};

/// The scenario `hestia sim run` uses when given none.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");

/// Runs a scenario with a seed.
pub fn run(scenario: Scenario, seed: u64, progress: impl FnMut(f64, u64) -> bool) -> Outcome {
    Sim::new(scenario, seed).run(progress)
}

/// Writes the summary as JSON, the time series and what each operator observed as CSV, and the
/// send-to-device latency CDF as SVG.
pub fn write_results(out: &Path, o: &Outcome) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(&o.summary).map_err(std::io::Error::other)?;
    std::fs::write(out.join("summary.json"), json + "\n")?;
    let mut csv = String::from(
        "t_s,sent,delivered_to_node,delivered_to_device,outbox_envelopes,mailbox_envelopes,max_node_envelopes\n",
    );
    for s in &o.series {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            s.t_s,
            s.sent,
            s.delivered_to_node,
            s.delivered_to_device,
            s.outbox_envelopes,
            s.mailbox_envelopes,
            s.max_node_envelopes
        );
    }
    std::fs::write(out.join("timeseries.csv"), csv)?;
    let mut ops = String::from(
        "node,senders,user_to_node_pairs,user_to_recipient_pairs,node_to_user_pairs,envelopes_from_local_users,envelopes_for_local_users,distinct_body_sizes\n",
    );
    for v in &o.operators {
        let _ = writeln!(
            ops,
            "{},{},{},{},{},{},{},{}",
            v.node,
            v.senders,
            v.user_to_node_pairs,
            v.user_to_recipient_pairs,
            v.node_to_user_pairs,
            v.envelopes_from_local_users,
            v.envelopes_for_local_users,
            v.distinct_body_sizes
        );
    }
    std::fs::write(out.join("operators.csv"), ops)?;
    std::fs::write(
        out.join("latency_cdf.svg"),
        cdf_svg(&o.device_latencies, &o.summary),
    )?;
    Ok(())
}

/// A cumulative distribution plot of send-to-device latency, log-scaled in time.
fn cdf_svg(sorted_ms: &[f64], s: &Summary) -> String {
    let (w, h, left, bottom) = (640.0, 400.0, 60.0, 50.0);
    let (pw, ph) = (w - left - 40.0, h - bottom - 30.0);
    let lo = sorted_ms
        .first()
        .copied()
        .unwrap_or(1.0)
        .max(1.0)
        .log10()
        .floor();
    let hi = sorted_ms
        .last()
        .copied()
        .unwrap_or(10.0)
        .max(10.0)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |v: f64| left + (v.max(1.0).log10() - lo) / (hi - lo) * pw;
    let y = |f: f64| 30.0 + (1.0 - f) * ph;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\">send to device latency, CDF ({}; seed {}; {} messages)</text>\n",
        s.scenario, s.seed, s.latency_send_to_device.count
    );
    for d in (lo as i64)..=(hi as i64) {
        let v = 10f64.powi(d as i32);
        let label = if v >= 1000.0 {
            format!("{} s", v / 1000.0)
        } else {
            format!("{v} ms")
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"30\" x2=\"{0}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>",
            x(v),
            30.0 + ph,
            30.0 + ph + 18.0
        );
    }
    for f in [0.0, 0.5, 0.9, 0.99] {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{f}</text>",
            y(f),
            left + pw,
            left - 6.0,
            y(f) + 4.0
        );
    }
    let n = sorted_ms.len();
    if n > 0 {
        let step = (n / 500).max(1);
        let mut points = String::new();
        for i in (0..n).step_by(step).chain(std::iter::once(n - 1)) {
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                x(sorted_ms[i]),
                y((i + 1) as f64 / n as f64)
            );
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{points}\"/>"
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">latency (log scale)</text>\n</svg>",
        left + pw / 2.0,
        h - 8.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        Scenario {
            name: "test".into(),
            nodes: 6,
            users_per_node: 5,
            duration_s: 600.0,
            drain_s: 1800.0,
            messages_per_user_per_hour: 30.0,
            crashes: vec![
                scenario::Crash {
                    node: 1,
                    at_s: 100.0,
                    down_s: 60.0,
                    disk_loss: false,
                },
                scenario::Crash {
                    node: 2,
                    at_s: 200.0,
                    down_s: 60.0,
                    disk_loss: true,
                },
            ],
            partitions: vec![scenario::Partition {
                start_s: 300.0,
                end_s: 360.0,
                split: 3,
            }],
            ..Scenario::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_run() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        write_results(a.path(), &run(small(), 7, |_, _| true)).unwrap();
        write_results(b.path(), &run(small(), 7, |_, _| true)).unwrap();
        write_results(c.path(), &run(small(), 8, |_, _| true)).unwrap();
        for f in [
            "summary.json",
            "timeseries.csv",
            "operators.csv",
            "latency_cdf.svg",
        ] {
            let x = std::fs::read(a.path().join(f)).unwrap();
            assert_eq!(
                x,
                std::fs::read(b.path().join(f)).unwrap(),
                "{f} differs for one seed"
            );
            assert!(!x.is_empty());
        }
        assert_ne!(
            std::fs::read(a.path().join("summary.json")).unwrap(),
            std::fs::read(c.path().join("summary.json")).unwrap()
        );
    }

    #[test]
    fn messages_get_through_crashes_and_partitions_except_what_a_lost_disk_held() {
        let o = run(small(), 3, |_, _| true);
        let s = &o.summary;
        assert!(s.messages_sent > 50, "{s:?}");
        // Everything is accounted for.
        assert_eq!(
            s.delivered_to_device
                + s.undelivered_expired
                + s.undelivered_lost_with_disk
                + s.undelivered_refused_unknown_user
                + s.undelivered_pending,
            s.messages_sent
        );
        // Users are online half the time and the run drains for 30 minutes: nearly all arrive.
        assert!(s.delivery_ratio > 0.9, "{s:?}");
        assert!(s.latency_send_to_device.p50_ms >= s.latency_send_to_node.p50_ms);
        assert_eq!(s.linkable_by_one_operator, 1.0);
        // Every send was observed by its sender's home node, and the links it can make are the
        // conversations the summary counts.
        let sent: u64 = o
            .operators
            .iter()
            .map(|v| v.envelopes_from_local_users)
            .sum();
        assert!(sent >= s.messages_sent, "{sent} < {}", s.messages_sent);
        let linked: usize = o.operators.iter().map(|v| v.user_to_recipient_pairs).sum();
        assert_eq!(linked, s.conversations);
    }

    /// Two nodes, one user each, all traffic crossing a partition from 1 s to `end_s`.
    fn partitioned_pair(end_s: f64) -> Summary {
        let sc = Scenario {
            nodes: 2,
            users_per_node: 1,
            duration_s: 8.0,
            drain_s: 120.0,
            messages_per_user_per_hour: 7200.0,
            crashes: vec![],
            partitions: vec![crate::scenario::Partition {
                start_s: 1.0,
                end_s,
                split: 1,
            }],
            link_loss: 0.0,
            online_fraction: 1.0,
            session_mean_s: 1e9,
            client_latency_ms: 0,
            link_latency_ms: (1, 1),
            ..small()
        };
        run(sc, 4, |_, _| true).summary
    }

    #[test]
    fn connections_recover_at_the_first_tcp_retransmission_after_the_partition() {
        let p = |start_s, end_s| crate::scenario::Partition {
            start_s,
            end_s,
            split: 1,
        };
        let at = |ms: u64| sim::EPOCH_MS + ms;
        // 18 s + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 24.2 s, the first retransmission after 24 s.
        assert_eq!(sim::tcp_release(at(18_000), &p(18.0, 24.0)), at(24_200));
        // A first loss 0.1 s later: 18.1 + 6.2 = 24.3 s.
        assert_eq!(sim::tcp_release(at(18_100), &p(18.0, 24.0)), at(24_300));
        assert_eq!(sim::tcp_release(at(1_000), &p(1.0, 4.0)), at(4_000));
        // Doubling stops at Linux's 120 s maximum (204.6 s in), then steps of 120 s.
        assert_eq!(sim::tcp_release(at(0), &p(0.0, 1000.0)), at(1_044_600));
    }

    #[test]
    fn a_short_partition_holds_requests_until_tcp_retransmits_a_long_one_times_them_out() {
        // Healed after 3 s: what was sent into it arrives at a TCP retransmission soon after,
        // well before the 10 s request timeout (as on the real stack).
        let short = partitioned_pair(4.0);
        assert_eq!(short.delivered_to_device, short.messages_sent);
        let p99 = short.latency_send_to_device.p99_ms;
        assert!(
            p99 > 1_000.0 && p99 < sim::FED_TIMEOUT_MS as f64,
            "{short:?}"
        );
        // 20 s: requests time out and are retried with backoff after the partition.
        let long = partitioned_pair(21.0);
        assert_eq!(long.delivered_to_device, long.messages_sent);
        assert!(long.latency_send_to_device.max_ms > 20_000.0, "{long:?}");
    }

    #[test]
    fn with_no_faults_and_everyone_online_everything_arrives_fast() {
        let sc = Scenario {
            crashes: vec![],
            partitions: vec![],
            link_loss: 0.0,
            online_fraction: 1.0,
            session_mean_s: 1e9,
            ..small()
        };
        let s = run(sc, 1, |_, _| true).summary;
        assert_eq!(s.delivered_to_device, s.messages_sent);
        // Device → node → node → device: two client hops each way plus one link, all bounded.
        assert!(
            s.latency_send_to_device.max_ms <= 20.0 * 3.0 + 80.0 + 1.0,
            "{s:?}"
        );
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        assert!(Scenario::from_toml("nodes = 0").is_err());
        assert!(Scenario::from_toml("nodez = 3").is_err());
        assert!(Scenario::from_toml("link_loss = 2.0").is_err());
        let e = Scenario::from_toml("nodes = 2\n[[crashes]]\nnode = 5\nat_s = 1.0\ndown_s = 1.0")
            .unwrap_err();
        assert!(e.to_string().contains("node 5"));
        assert!(Scenario::from_toml(DEFAULT_SCENARIO).is_ok());
    }
}

#[cfg(test)]
mod privacy_tests {
    use super::*;

    /// Everyone online, no faults, realistic text lengths: only the knobs differ between runs.
    fn plain() -> Scenario {
        Scenario {
            name: "privacy".into(),
            nodes: 10,
            users_per_node: 10,
            duration_s: 1200.0,
            drain_s: 600.0,
            messages_per_user_per_hour: 6.0,
            online_fraction: 1.0,
            link_loss: 0.0,
            crashes: vec![],
            partitions: vec![],
            mean_text_bytes: 80.0,
            ..Scenario::default()
        }
    }

    #[test]
    fn cover_traffic_lowers_linkability_and_its_cost_shows() {
        let base = run(plain(), 3, |_, _| true).summary;
        assert_eq!(base.linkable_by_one_operator, 1.0, "{base:?}");
        assert_eq!(base.cover_envelopes_sent, 0);
        let covered = run(
            Scenario {
                cover_messages_per_user_per_hour: 60.0,
                ..plain()
            },
            3,
            |_, _| true,
        )
        .summary;
        // Ten dummies per message to random users: most observed pairs could be dummies.
        assert!(
            covered.linkable_by_one_operator < 0.5,
            "{}",
            covered.linkable_by_one_operator
        );
        assert!(covered.cover_envelopes_sent > 5 * covered.messages_sent);
        assert!(covered.bytes_fed_requests > 5 * base.bytes_fed_requests);
        assert!(
            covered.linkable_by_two_colluding_operators >= covered.linkable_by_one_operator,
            "{covered:?}"
        );
    }

    #[test]
    fn a_run_to_its_full_end_samples_each_time_once() {
        // Messages still pending at the end (no drain): the run goes to its horizon, where
        // the closing sample falls on a scheduled one.
        let sc = Scenario {
            drain_s: 0.0,
            online_fraction: 0.5,
            ..plain()
        };
        let o = run(sc, 2, |_, _| true);
        let times: Vec<f64> = o.series.iter().map(|s| s.t_s).collect();
        assert!(times.len() > 2);
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "repeated or unordered sample times: {:?}",
            &times[times.len() - 3..]
        );
    }

    #[test]
    fn two_colluding_operators_link_more_where_conversations_go_both_ways() {
        // Few users: most pairs that talk talk both ways, and each direction's envelopes are
        // seen at a different home node.
        let sc = Scenario {
            nodes: 2,
            users_per_node: 2,
            duration_s: 3600.0,
            cover_messages_per_user_per_hour: 6.0,
            ..plain()
        };
        let s = run(sc, 5, |_, _| true).summary;
        let (one, two) = (
            s.linkable_by_one_operator,
            s.linkable_by_two_colluding_operators,
        );
        assert!(one > 0.0 && one < 1.0, "{s:?}");
        assert!(two > one, "computed, not copied: one {one}, two {two}");
        assert!(two <= 1.0);
    }

    #[test]
    fn batching_delay_costs_latency_and_padding_hides_sizes() {
        let base = run(plain(), 4, |_, _| true);
        let delayed = run(
            Scenario {
                batching_delay_ms: 10_000,
                ..plain()
            },
            4,
            |_, _| true,
        );
        let (b, d) = (
            &base.summary.latency_send_to_node,
            &delayed.summary.latency_send_to_node,
        );
        assert!(d.p50_ms > b.p50_ms + 2_000.0, "{b:?} {d:?}");
        // Padding on: operators see at most one size per bucket. Off: sizes spread out.
        let sizes = |o: &Outcome| {
            o.operators
                .iter()
                .map(|v| v.distinct_body_sizes)
                .max()
                .unwrap()
        };
        assert!(sizes(&base) <= hestia_protocol::envelope::PADDING_BUCKETS.len());
        let unpadded = run(
            Scenario {
                padding: false,
                ..plain()
            },
            4,
            |_, _| true,
        );
        assert!(sizes(&unpadded) > 10, "{}", sizes(&unpadded));
        assert!(unpadded.summary.bytes_fed_requests < base.summary.bytes_fed_requests);
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    fn flat() -> Scenario {
        Scenario {
            name: "network".into(),
            nodes: 10,
            users_per_node: 10,
            duration_s: 1200.0,
            drain_s: 600.0,
            messages_per_user_per_hour: 12.0,
            online_fraction: 1.0,
            link_loss: 0.0,
            link_latency_ms: (10, 10),
            crashes: vec![],
            partitions: vec![],
            ..Scenario::default()
        }
    }

    #[test]
    fn regions_and_bandwidth_add_latency() {
        let base = run(flat(), 5, |_, _| true).summary.latency_send_to_node;
        let regions = run(
            Scenario {
                regions: 2,
                inter_region_latency_ms: (300, 300),
                ..flat()
            },
            5,
            |_, _| true,
        )
        .summary
        .latency_send_to_node;
        // About half the messages cross regions: the upper percentiles pay the long link.
        assert!(
            regions.p90_ms >= base.p90_ms + 290.0,
            "{base:?} {regions:?}"
        );
        let slow = run(
            Scenario {
                link_bandwidth_mbps: 0.01,
                ..flat()
            },
            5,
            |_, _| true,
        )
        .summary
        .latency_send_to_node;
        // A 328-byte body alone takes 263 ms at 10 kbit/s.
        assert!(slow.p50_ms > base.p50_ms + 250.0, "{base:?} {slow:?}");
    }

    #[test]
    fn power_law_node_sizes_put_most_users_on_a_few_nodes() {
        let sc = Scenario {
            nodes: 20,
            users_per_node: 10,
            node_sizes: crate::scenario::NodeSizes::PowerLaw,
            node_size_exponent: 1.2,
            ..flat()
        };
        let sizes = sc.node_sizes();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|s| *s >= 1));
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert!(sizes[0] >= 50 && sizes[19] <= 3, "{sizes:?}");
        assert_eq!(flat().node_sizes(), vec![10; 10]);
        // The biggest node's operator sees its many users' traffic; the smallest sees little.
        let o = run(sc, 3, |_, _| true);
        assert_eq!(o.summary.users, 200);
        let (big, small) = (&o.operators[0], &o.operators[19]);
        assert!(
            big.envelopes_from_local_users > 10 * small.envelopes_from_local_users.max(1),
            "{big:?} {small:?}"
        );
    }

    #[test]
    fn messages_queue_behind_each_other_on_a_busy_link() {
        // Two nodes, 40 users each sending to the other node's users (and their own): about 11
        // federation messages a second each way, each taking ~26 ms to transmit at 0.1 Mbit/s
        // (a 328-byte body plus framing): the link is busy most of the time.
        let busy = |mbps| {
            let sc = Scenario {
                nodes: 2,
                users_per_node: 40,
                duration_s: 120.0,
                messages_per_user_per_hour: 1800.0,
                link_bandwidth_mbps: mbps,
                ..flat()
            };
            // Only the messages that cross the link: about half stay on their own node, and a
            // median over both sits on the boundary between the two.
            run(sc, 5, |_, _| true).summary.latency_send_to_other_node
        };
        let (fast, slow) = (busy(0.0), busy(0.1));
        // Alone a message takes its own transmission time more (p50 and, without queueing, p99
        // too: +32 ms); queued, the tail also waits for others' transmissions.
        assert!(slow.p50_ms >= fast.p50_ms + 26.0, "{fast:?} {slow:?}");
        assert!(slow.p99_ms >= fast.p99_ms + 3.0 * 26.0, "{fast:?} {slow:?}");
        assert!(slow.max_ms >= fast.max_ms + 4.0 * 26.0, "{fast:?} {slow:?}");
    }

    #[test]
    fn a_diurnal_pattern_moves_sending_between_the_halves_of_a_day() {
        let day = Scenario {
            duration_s: 3600.0,
            diurnal_amplitude: 1.0,
            diurnal_period_s: 3600.0,
            sample_every_s: 1800.0,
            ..flat()
        };
        let o = run(day, 6, |_, _| true);
        // sin > 0 in the first half of the period, < 0 in the second.
        let at = |t: f64| {
            o.series
                .iter()
                .find(|s| s.t_s >= t)
                .map(|s| s.sent)
                .unwrap()
        };
        let first = at(1800.0);
        let second = at(3600.0) - first;
        assert!(
            first > 3 * second,
            "first half {first}, second half {second}"
        );
    }
}

#[cfg(test)]
mod interrupt_tests {
    use super::*;

    #[test]
    fn an_interrupted_run_still_summarises_what_it_reached() {
        let o = run(Scenario::default(), 1, |_, events| events < 100_000);
        assert!(o.summary.interrupted);
        assert_eq!(o.summary.events, 100_000);
        assert!(o.summary.messages_sent > 0);
    }
}
