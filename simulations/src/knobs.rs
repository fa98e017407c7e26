//! A privacy-knob sweep: the scenario as given, then one knob changed at a time (cover traffic
//! at 1, 10 and 100 dummies per message, a batching delay, a wake-up delay when the scenario
//! has phones, padding flipped), all with one seed.
//! The workload has a random stream of its own, so every run carries the same messages and the
//! differences are the knobs' alone. Each run reports what it buys (how well one operator, or two
//! colluding, link conversations) and what it costs (latency, bytes, storage).

use crate::sim::Outcome;
use crate::{Scenario, Summary, plots};
use serde::Serialize;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// One run of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct KnobRun {
    /// What was changed from the scenario as given ("as given" for the baseline).
    pub knob: String,
    pub linkable_by_one_operator: f64,
    pub linkable_by_two_colluding_operators: f64,
    pub send_to_node_p50_ms: f64,
    pub send_to_node_p99_ms: f64,
    pub send_to_device_p50_ms: f64,
    pub bytes_client: u64,
    pub bytes_fed_requests: u64,
    /// All bytes moved (client and federation, both ways) over the baseline's.
    pub bytes_relative: f64,
    /// Most distinct envelope body sizes any one operator saw.
    pub most_body_sizes_one_operator_saw: usize,
    pub max_envelopes_on_one_node: usize,
    pub messages_sent: u64,
    /// With phones: the share of wake-ups that left within a second of the arrival that armed
    /// them (what the push service learns of arrival times), and the send-to-device median of
    /// messages to phones.
    pub wake_ups_timed_within_1s: f64,
    pub send_to_phone_p50_ms: f64,
    /// Wake-ups per phone per day: what a knob costs a phone's battery.
    pub wake_ups_per_phone_day: f64,
}

/// The scenario as given, then each knob changed alone.
pub fn variants(base: &Scenario) -> Vec<(String, Scenario)> {
    let m = base.messages_per_user_per_hour;
    let mut v = vec![("as given".to_string(), base.clone())];
    for ratio in [1.0, 10.0, 100.0] {
        v.push((
            format!("cover {} per user-hour ({ratio} : 1)", m * ratio),
            Scenario {
                cover_messages_per_user_per_hour: base.cover_messages_per_user_per_hour + m * ratio,
                ..base.clone()
            },
        ));
    }
    v.push((
        "batching delay up to 10 s".into(),
        Scenario {
            batching_delay_ms: 10_000,
            ..base.clone()
        },
    ));
    if base.phone_fraction > 0.0 {
        v.push((
            "wake-up delay up to 30 s".into(),
            Scenario {
                push_max_delay_ms: 30_000,
                ..base.clone()
            },
        ));
    }
    v.push((
        if base.padding {
            "padding off"
        } else {
            "padding on"
        }
        .into(),
        Scenario {
            padding: !base.padding,
            ..base.clone()
        },
    ));
    v
}

fn total_bytes(s: &Summary) -> u64 {
    s.bytes_client + s.bytes_fed_requests + s.bytes_fed_responses
}

/// Runs every variant with `seed`; `progress` hears each knob as its run starts. A run that
/// `keep_going` stops (Ctrl-C) ends the sweep with the runs before it.
pub fn sweep(
    base: &Scenario,
    seed: u64,
    mut progress: impl FnMut(&str),
    keep_going: impl Fn() -> bool,
) -> Vec<KnobRun> {
    let mut runs = Vec::new();
    let mut baseline_bytes = None;
    for (knob, sc) in variants(base) {
        progress(&knob);
        let o: Outcome = crate::run(sc, seed, |_, _| keep_going());
        if o.summary.interrupted {
            break;
        }
        let s = &o.summary;
        let base_bytes = *baseline_bytes.get_or_insert(total_bytes(s).max(1));
        runs.push(KnobRun {
            knob,
            linkable_by_one_operator: s.linkable_by_one_operator,
            linkable_by_two_colluding_operators: s.linkable_by_two_colluding_operators,
            send_to_node_p50_ms: s.latency_send_to_node.p50_ms,
            send_to_node_p99_ms: s.latency_send_to_node.p99_ms,
            send_to_device_p50_ms: s.latency_send_to_device.p50_ms,
            bytes_client: s.bytes_client,
            bytes_fed_requests: s.bytes_fed_requests,
            bytes_relative: total_bytes(s) as f64 / base_bytes as f64,
            most_body_sizes_one_operator_saw: o
                .operators
                .iter()
                .map(|v| v.distinct_body_sizes)
                .max()
                .unwrap_or(0),
            max_envelopes_on_one_node: s.max_envelopes_on_one_node,
            messages_sent: s.messages_sent,
            wake_ups_timed_within_1s: s.push.arrivals_timed_within_1s,
            send_to_phone_p50_ms: s.push.latency_to_phones.p50_ms,
            wake_ups_per_phone_day: s.push.wake_ups_per_phone_day,
        });
    }
    runs
}

/// The sweep as a Markdown table (what docs/simulations.md shows), with two columns on
/// wake-ups when the scenario has phones.
pub fn table(runs: &[KnobRun]) -> String {
    let phones = runs.iter().any(|r| r.knob.starts_with("wake-up delay"));
    let mut t = String::from(
        "| knob | linkable (one operator) | linkable (two colluding) | send→node p50 / p99 | \
         send→device p50 | client bytes | federation request bytes | all bytes vs as given | \
         most body sizes one operator saw |",
    );
    if phones {
        t.push_str(
            " wake-ups within 1 s of the arrival | send→phone p50 | wake-ups per phone-day |",
        );
    }
    t.push_str("\n|");
    t.push_str(&" --- |".repeat(if phones { 12 } else { 9 }));
    t.push('\n');
    for r in runs {
        let _ = write!(
            t,
            "| {} | {:.3} | {:.3} | {:.0} / {:.0} ms | {:.0} ms | {:.1} MB | {:.1} MB | {:.2}× | {} |",
            r.knob,
            r.linkable_by_one_operator,
            r.linkable_by_two_colluding_operators,
            r.send_to_node_p50_ms,
            r.send_to_node_p99_ms,
            r.send_to_device_p50_ms,
            r.bytes_client as f64 / 1e6,
            r.bytes_fed_requests as f64 / 1e6,
            r.bytes_relative,
            r.most_body_sizes_one_operator_saw
        );
        if phones {
            let _ = write!(
                t,
                " {:.0}% | {:.1} s | {:.0} |",
                r.wake_ups_timed_within_1s * 100.0,
                r.send_to_phone_p50_ms / 1000.0,
                r.wake_ups_per_phone_day
            );
        }
        t.push('\n');
    }
    t
}

/// Writes `knobs.json`, `knobs.md` (the table) and `knobs.svg` (linkability against bytes).
pub fn write_sweep(out: &Path, title: &str, runs: &[KnobRun]) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(runs).map_err(io::Error::other)?;
    std::fs::write(out.join("knobs.json"), json + "\n")?;
    std::fs::write(out.join("knobs.md"), table(runs))?;
    let points: Vec<(String, f64, f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                r.knob.clone(),
                r.bytes_relative,
                r.linkable_by_one_operator,
                r.linkable_by_two_colluding_operators,
            )
        })
        .collect();
    std::fs::write(
        out.join("knobs.svg"),
        plots::linkability_against_cost(title, &points)?,
    )?;
    Ok(())
}
