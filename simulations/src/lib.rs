//! Deterministic network simulations of a Hestia federation, for researchers.
//!
//! The simulator drives the production relay core ([`hestia_node::relay::Core`]) of every node
//! under a discrete-event scheduler with a virtual clock and one seeded RNG; network, devices and
//! storage ([`hestia_store::node::MemNodeStore`], the same interface as RocksDB) are simulated.
//! The same scenario and seed give byte-identical results.
//!
//! - [`scenario`]: what a run simulates, read from TOML.
//! - [`sim`]: the engine and its results.
//! - [`plots`]: the SVG plots, drawn with plotters.
//! - [`knobs`]: a privacy-knob sweep, each knob's effect on the same messages.
//! - [`write_results`]: `summary.json`, `scenario.toml`, `timeseries.csv`, `operators.csv`,
//!   `latency_cdf.svg`, `held.svg` and `storage.svg`.

pub mod knobs;
pub mod plots;
pub mod scenario;
pub mod sim;

use std::fmt::Write as _;
use std::path::Path;

pub use scenario::Scenario;
pub use sim::{Outcome, Sim, Summary};

/// The scenario `hestia sim run` uses when given none.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");
/// The scenario `hestia sim knobs` uses when given none.
pub const KNOBS_SCENARIO: &str = include_str!("../scenarios/privacy-knobs.toml");

/// Runs a scenario with a seed.
pub fn run(scenario: Scenario, seed: u64, progress: impl FnMut(f64, u64) -> bool) -> Outcome {
    Sim::new(scenario, seed).run(progress)
}

/// Writes the summary as JSON, the resolved scenario as TOML, the time series and what each
/// operator observed as CSV, and the send-to-device latency CDF and the envelopes held over
/// time as SVG.
pub fn write_results(out: &Path, o: &Outcome) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(&o.summary).map_err(std::io::Error::other)?;
    std::fs::write(out.join("summary.json"), json + "\n")?;
    // The resolved scenario, so a result directory replays without the original file.
    let scenario = toml::to_string(&o.summary.resolved_scenario).map_err(std::io::Error::other)?;
    std::fs::write(
        out.join("scenario.toml"),
        format!(
            "# The scenario this run resolved to; replay: hestia sim run scenario.toml --seed {}\n{scenario}",
            o.summary.seed
        ),
    )?;
    let mut csv = String::from(
        "t_s,sent,delivered_to_node,delivered_to_device,outbox_envelopes,mailbox_envelopes,max_node_envelopes,mailbox_bytes,file_bytes,max_node_bytes\n",
    );
    for s in &o.series {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{}",
            s.t_s,
            s.sent,
            s.delivered_to_node,
            s.delivered_to_device,
            s.outbox_envelopes,
            s.mailbox_envelopes,
            s.max_node_envelopes,
            s.mailbox_bytes,
            s.file_bytes,
            s.max_node_bytes
        );
    }
    std::fs::write(out.join("timeseries.csv"), csv)?;
    let mut ops = String::from(
        "node,senders,user_to_node_pairs,user_to_recipient_pairs,node_to_user_pairs,envelopes_from_local_users,envelopes_for_local_users,distinct_body_sizes,uploader_to_fetching_node_pairs,uploader_to_local_fetcher_pairs,distinct_file_sizes\n",
    );
    for v in &o.operators {
        let _ = writeln!(
            ops,
            "{},{},{},{},{},{},{},{},{},{},{}",
            v.node,
            v.senders,
            v.user_to_node_pairs,
            v.user_to_recipient_pairs,
            v.node_to_user_pairs,
            v.envelopes_from_local_users,
            v.envelopes_for_local_users,
            v.distinct_body_sizes,
            v.uploader_to_fetching_node_pairs,
            v.uploader_to_local_fetcher_pairs,
            v.distinct_file_sizes
        );
    }
    std::fs::write(out.join("operators.csv"), ops)?;
    let s = &o.summary;
    let title = format!(
        "send to device latency, CDF ({}; seed {}; {} messages)",
        s.scenario, s.seed, s.latency_send_to_device.count
    );
    let cdf = plots::latency_cdf(&title, &[("model", &o.device_latencies)])?;
    std::fs::write(out.join("latency_cdf.svg"), cdf)?;
    let title = format!("envelopes held over time ({}; seed {})", s.scenario, s.seed);
    std::fs::write(
        out.join("held.svg"),
        plots::held_over_time(&title, &o.series)?,
    )?;
    let title = format!(
        "mail and files held over time ({}; seed {})",
        s.scenario, s.seed
    );
    std::fs::write(
        out.join("storage.svg"),
        plots::storage_over_time(&title, &o.series)?,
    )?;
    Ok(())
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
    fn a_result_directory_replays_from_its_own_scenario_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = run(small(), 4, |_, _| true);
        write_results(dir.path(), &first).unwrap();
        let text = std::fs::read_to_string(dir.path().join("scenario.toml")).unwrap();
        let sc = Scenario::from_toml(&text).unwrap();
        assert_eq!(sc, small());
        let again = tempfile::tempdir().unwrap();
        write_results(again.path(), &run(sc, 4, |_, _| true)).unwrap();
        for f in ["summary.json", "timeseries.csv", "operators.csv"] {
            assert_eq!(
                std::fs::read(dir.path().join(f)).unwrap(),
                std::fs::read(again.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }

    /// Common random numbers: turning a privacy knob on changes how messages travel, not which
    /// messages are written, so knob comparisons are paired message for message.
    #[test]
    fn a_privacy_knob_leaves_the_messages_alone() {
        let base = Scenario {
            online_fraction: 0.6,
            session_mean_s: 120.0,
            mean_text_bytes: 200.0,
            diurnal_amplitude: 0.5,
            diurnal_period_s: 600.0,
            ..small()
        };
        let messages = |sc: Scenario| {
            let o = Sim::new(sc, 11).traced().run(|_, _| true);
            let m: Vec<(u64, usize, usize)> = o
                .messages
                .iter()
                .map(|m| (m.sent_ms, m.from_user, m.to_user))
                .collect();
            (m, o.summary.not_sent_home_node_down)
        };
        let plain = messages(base.clone());
        assert!(plain.0.len() > 50, "{}", plain.0.len());
        for knob in [
            Scenario {
                cover_messages_per_user_per_hour: 20.0,
                ..base.clone()
            },
            Scenario {
                batching_delay_ms: 2_000,
                ..base.clone()
            },
            Scenario {
                padding: !base.padding,
                ..base.clone()
            },
        ] {
            assert_eq!(messages(knob), plain);
        }
        // Another seed is another workload.
        let other = Sim::new(base, 12).traced().run(|_, _| true);
        assert_ne!(other.messages.len(), 0);
        assert_ne!(
            other.messages.iter().map(|m| m.sent_ms).collect::<Vec<_>>(),
            plain.0.iter().map(|m| m.0).collect::<Vec<_>>()
        );
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
            "held.svg",
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

    /// The parallel engine: the same bytes on one thread or several, with every kind of traffic
    /// and fault crossing between shards (files fetched across them, calls between them,
    /// phones woken, a crash with its disk, a partition).
    #[test]
    fn shards_give_the_same_bytes_on_any_number_of_threads() {
        let sc = Scenario {
            shards: 4,
            files_per_user_per_hour: 3.0,
            file_median_bytes: 200_000.0,
            phone_fraction: 0.5,
            calls_per_user_per_hour: 2.0,
            online_fraction: 0.7,
            session_mean_s: 120.0,
            ..small()
        };
        let results = |threads: usize| {
            let dir = tempfile::tempdir().unwrap();
            let o = Sim::new(sc.clone(), 5)
                .threads(threads)
                .traced()
                .run(|_, _| true);
            write_results(dir.path(), &o).unwrap();
            let files: Vec<Vec<u8>> = ["summary.json", "timeseries.csv", "operators.csv"]
                .iter()
                .map(|f| std::fs::read(dir.path().join(f)).unwrap())
                .collect();
            let traced: Vec<_> = o
                .messages
                .iter()
                .map(|m| (m.sent_ms, m.from_user, m.to_user, m.latency_ms))
                .collect();
            (files, traced, o.summary)
        };
        let (one, traced, s) = results(1);
        let f = &s.files;
        assert!(f.fetched > 3 && f.chunk_bytes_between_nodes > 0, "{f:?}");
        assert!(s.calls.connected > 0 && s.push.wake_ups_sent > 0, "{s:?}");
        assert!(
            s.undelivered_lost_with_disk > 0 || s.delivery_ratio > 0.9,
            "{s:?}"
        );
        assert!(
            traced.windows(2).all(|w| w[0].0 <= w[1].0),
            "in sending order"
        );
        for threads in [2, 3, 4] {
            let (other, other_traced, _) = results(threads);
            assert_eq!(traced, other_traced, "{threads} threads");
            for (a, b) in one.iter().zip(&other) {
                assert_eq!(
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b),
                    "{threads} threads"
                );
            }
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        assert!(Scenario::from_toml("nodes = 0").is_err());
        assert!(Scenario::from_toml("nodez = 3").is_err());
        assert!(Scenario::from_toml("link_loss = 2.0").is_err());
        // Each error names the field, on one line, once.
        let refused = |text: &str, field: &str| {
            let e = Scenario::from_toml(text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(field), "{text:?}: {msg}");
            assert!(!msg.contains('\n'), "{text:?}: not one line: {msg}");
            assert!(
                std::error::Error::source(&e).is_none(),
                "{text:?}: printed twice"
            );
        };
        refused(
            "nodes = 2\n[[crashes]]\nnode = 5\nat_s = 1.0\ndown_s = 1.0",
            "crashes[0].node",
        );
        refused("nodes = 4\nnodez = 3", "line 2: unknown field `nodez`");
        refused(
            "[[crashes]]\nnode = 1\nat_s = 1.0\ndown_s = -3",
            "crashes[0].down_s",
        );
        refused(
            "duration_s = 10\n[[crashes]]\nnode = 1\nat_s = 11\ndown_s = 3",
            "crashes[0].at_s",
        );
        let cut = |start: f64, end: f64, split: usize| {
            format!("nodes = 4\n[[partitions]]\nstart_s = {start}\nend_s = {end}\nsplit = {split}")
        };
        refused(&cut(10.0, 5.0, 2), "partitions[0].end_s");
        refused(&cut(1.0, 5.0, 0), "partitions[0].split");
        refused(&cut(1.0, 5.0, 4), "partitions[0].split");
        assert!(Scenario::from_toml(&cut(1.0, 5.0, 3)).is_ok());
        refused("session_mean_s = 0", "session_mean_s");
        refused(
            "messages_per_user_per_hour = -1",
            "messages_per_user_per_hour",
        );
        refused("ttl_s = nan", "ttl_s");
        refused("nodes = 4\nshards = 0", "shards");
        refused("nodes = 4\nshards = 5", "shards must be 1..=4");
        refused("shards = 2\nlink_latency_ms = [0, 5]", "shards > 1");
        assert!(Scenario::from_toml("nodes = 4\nshards = 4").is_ok());
        // A file that names only its size inherits no faults and no name.
        let sc = Scenario::from_toml("nodes = 10").unwrap();
        assert!(sc.crashes.is_empty() && sc.partitions.is_empty(), "{sc:?}");
        assert_eq!(sc.name, "");
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
    fn a_knob_sweep_runs_each_knob_on_the_same_messages_and_plots_it() {
        let sc = Scenario {
            nodes: 4,
            users_per_node: 5,
            duration_s: 600.0,
            ..plain()
        };
        let runs = knobs::sweep(&sc, 5, |_| {}, || true);
        assert_eq!(runs.len(), knobs::variants(&sc).len());
        let base = &runs[0];
        assert_eq!(base.knob, "as given");
        assert_eq!(base.bytes_relative, 1.0);
        for r in &runs {
            assert_eq!(
                r.messages_sent, base.messages_sent,
                "{}: other messages",
                r.knob
            );
        }
        // More cover, less linkable, more bytes, in order.
        let cover: Vec<&knobs::KnobRun> = runs
            .iter()
            .filter(|r| r.knob.starts_with("cover"))
            .collect();
        assert_eq!(cover.len(), 3);
        let mut last = (base.linkable_by_one_operator, 1.0);
        for r in cover {
            assert!(r.linkable_by_one_operator < last.0, "{r:?}");
            assert!(r.bytes_relative > last.1, "{r:?}");
            assert!(r.linkable_by_two_colluding_operators >= r.linkable_by_one_operator);
            last = (r.linkable_by_one_operator, r.bytes_relative);
        }
        let dir = tempfile::tempdir().unwrap();
        knobs::write_sweep(dir.path(), "test <sweep>", &runs).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("knobs.svg")).unwrap();
        assert!(
            svg.contains("padding off") && svg.contains("two colluding"),
            "{svg}"
        );
        assert!(!svg.contains("<sweep>"), "text is escaped");
        let md = std::fs::read_to_string(dir.path().join("knobs.md")).unwrap();
        assert_eq!(md.lines().count(), 2 + runs.len());
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
