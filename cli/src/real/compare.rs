//! How the two sides of a `--real` run compare: each side's delivery and latency figures, the
//! distance between their latency distributions, the CDF table and the printed report.

use super::SEND_GIVE_UP;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
pub struct Side {
    pub messages_sent: u64,
    pub not_sent_home_node_down: u64,
    pub delivered_to_device: u64,
    pub delivery_ratio: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    /// `loopback` or `namespaces` (one network namespace per node, for partitions).
    pub network: &'static str,
    pub crashes: usize,
    pub partitions: usize,
    pub real: Side,
    pub model: Side,
    /// Of the messages both sides sent, the fraction whose fates match: both delivered with
    /// latencies within `latency_tolerance_ms` of each other, or both undelivered. Reported,
    /// not judged: it shows where single messages differ (real_messages.csv lists them).
    pub paired_within_slack: f64,
    /// How far the two send-to-device latency CDFs are apart, given `latency_tolerance_ms` of
    /// horizontal slack (0..=1; see `cdf_gap` and docs/simulations.md).
    pub cdf_gap: f64,
    pub ratio_tolerance: f64,
    pub latency_tolerance_ms: f64,
    pub cdf_tolerance: f64,
    pub agree: bool,
    /// Ctrl-C stopped the run: the real side covers only `real_s` seconds of sending (the
    /// model's side is the whole scenario), so the two are not compared (`agree` is false).
    pub interrupted: bool,
    /// Seconds of the scenario the real side ran, from the first send to the last.
    pub real_s: f64,
    /// The files, if the scenario has any.
    pub files: Option<FileComparison>,
}

/// One side's files.
#[derive(Serialize)]
pub struct FileSide {
    pub begun: u64,
    pub fetched: u64,
    pub fetched_ratio: f64,
    /// Begin-to-fetched time.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct FileComparison {
    pub real: FileSide,
    pub model: FileSide,
    /// How far the begin-to-fetched CDFs are apart, with `latency_tolerance_ms` of slack.
    pub cdf_gap: f64,
    pub latency_tolerance_ms: f64,
    pub agree: bool,
}

pub(super) fn file_side(begun: u64, sorted: &[f64]) -> FileSide {
    FileSide {
        begun,
        fetched: sorted.len() as u64,
        fetched_ratio: if begun == 0 {
            1.0
        } else {
            sorted.len() as f64 / begun as f64
        },
        p50_ms: percentile(sorted, 0.5),
        p90_ms: percentile(sorted, 0.9),
        p99_ms: percentile(sorted, 0.99),
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The fraction of a sorted sample at or below `x` (0 for an empty sample).
pub(super) fn ecdf(sorted: &[f64], x: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.partition_point(|v| *v <= x) as f64 / sorted.len() as f64
}

/// How far apart two latency distributions are, allowing `slack_ms` of horizontal shift: the
/// largest vertical gap by which either empirical CDF falls below the other shifted right by
/// the slack (the Lévy distance's construction, with the slack fixed). 0 when every quantile of
/// each sample is within the slack of the other's; 1 when the samples are far apart. Samples
/// are sorted.
pub(super) fn cdf_gap(a: &[f64], b: &[f64], slack_ms: f64) -> f64 {
    if a.is_empty() || b.is_empty() {
        return if a.len() == b.len() { 0.0 } else { 1.0 };
    }
    let mut gap = 0.0f64;
    for &x in a.iter().chain(b) {
        for t in [x, x + slack_ms] {
            gap = gap
                .max(ecdf(b, t - slack_ms) - ecdf(a, t))
                .max(ecdf(a, t - slack_ms) - ecdf(b, t));
        }
    }
    gap.max(0.0)
}

/// Both send-to-device latency CDFs (sorted samples) at log-spaced latencies, ten a decade from
/// 0.5 ms up to the first grid point at or past the larger of the two maxima (where both CDFs
/// read 1).
pub(super) fn cdf_table(real: &[f64], model: &[f64]) -> String {
    let mut csv = String::from("latency_ms,real_cdf,model_cdf\n");
    let max = real
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(model.last().copied().unwrap_or(0.0));
    let step = 10f64.powf(0.1);
    for k in 0.. {
        let x = 0.5 * step.powi(k);
        csv += &format!("{x:.1},{:.4},{:.4}\n", ecdf(real, x), ecdf(model, x));
        if x >= max {
            break;
        }
    }
    csv
}

/// Prints the comparison, where the results are and how to run it again.
pub fn report(c: &Comparison, scenario: &Option<PathBuf>, out: &Path) {
    println!(
        "scenario {} (seed {}): network {}, {} crashes, {} partitions",
        c.scenario, c.seed, c.network, c.crashes, c.partitions
    );
    if c.interrupted {
        println!(
            "interrupted after {:.0} s of sending: the real side covers those, the model's the \
             whole scenario; not compared",
            c.real_s
        );
    }
    println!("                 sent  not sent  delivered  ratio   p50 ms   p90 ms   p99 ms");
    for (name, s) in [("real stack", &c.real), ("model", &c.model)] {
        println!(
            "{name:<12} {:>9} {:>9} {:>10} {:>6.3} {:>8.1} {:>8.1} {:>8.1}",
            s.messages_sent,
            s.not_sent_home_node_down,
            s.delivered_to_device,
            s.delivery_ratio,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms
        );
    }
    println!(
        "(not sent: due while the sender's home node was down, or not taken by it within {} s; \
         none unless the scenario crashes a node)",
        SEND_GIVE_UP.as_secs()
    );
    println!(
        "messages with the same fate on both sides (latency within ±{slack} ms): {:.3}\n\
         latency CDFs apart by {:.3} (with ±{slack} ms of slack)\n\
         agree within ±{} delivery ratio and {} of CDF: {}",
        c.paired_within_slack,
        c.cdf_gap,
        c.ratio_tolerance,
        c.cdf_tolerance,
        if c.interrupted {
            "not judged"
        } else if c.agree {
            "yes"
        } else {
            "NO"
        },
        slack = c.latency_tolerance_ms,
    );
    if let Some(f) = &c.files {
        println!(
            "files          begun  fetched  ratio   p50 ms   p90 ms   p99 ms  (begun to fetched)"
        );
        for (name, s) in [("real stack", &f.real), ("model", &f.model)] {
            println!(
                "{name:<12} {:>7} {:>8} {:>6.3} {:>8.1} {:>8.1} {:>8.1}",
                s.begun, s.fetched, s.fetched_ratio, s.p50_ms, s.p90_ms, s.p99_ms
            );
        }
        println!(
            "file CDFs apart by {:.3} (with ±{} ms of slack: the model counts no synced writes)",
            f.cdf_gap, f.latency_tolerance_ms
        );
    }
    println!(
        "results in {} (real.json, real_messages.csv, {}real_vs_model_cdf.csv, latency_cdf.svg \
         and the model's files)",
        out.display(),
        if c.files.is_some() {
            "real_files.csv, "
        } else {
            ""
        }
    );
    let file = scenario
        .as_ref()
        .map(|p| format!("{} ", p.display()))
        .unwrap_or_default();
    println!(
        "replay with: hestia sim run {file}--real --seed {} --out {}",
        c.seed,
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_gap_allows_the_slack_and_catches_what_exceeds_it() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(cdf_gap(&a, &a, 0.0), 0.0);
        assert_eq!(cdf_gap(&a, &[10.0, 11.0], 0.0), 1.0);
        // Shifted by 2: half apart without slack, together with 2 of slack.
        let b = [3.0, 4.0, 5.0, 6.0];
        assert!((cdf_gap(&a, &b, 0.0) - 0.5).abs() < 1e-9);
        assert_eq!(cdf_gap(&a, &b, 2.0), 0.0);
        assert_eq!(cdf_gap(&b, &a, 2.0), 0.0);
        // A tail the other lacks: a quarter of one sample is 1000 later.
        let c = [1.0, 2.0, 3.0, 1004.0];
        assert!((cdf_gap(&a, &c, 25.0) - 0.25).abs() < 1e-9);
    }
}
