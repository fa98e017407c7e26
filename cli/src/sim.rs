//! `hestia sim …`: run a scenario on the model (and with `--real` on real node processes too),
//! or sweep the privacy knobs; progress on stderr, a summary and the replay line on stdout.

use crate::real;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum SimCmd {
    /// Run a scenario (default: the bundled one) and write summary.json, scenario.toml,
    /// timeseries.csv, operators.csv, latency_cdf.svg, held.svg and storage.svg.
    ///
    /// A scenario is TOML; every field has a default, so a file names only what it changes:
    /// name, nodes, users_per_node, node_sizes (equal|power_law), node_size_exponent,
    /// duration_s, drain_s, messages_per_user_per_hour, diurnal_amplitude, diurnal_period_s,
    /// social_graph (uniform|power_law), power_law_exponent, client_latency_ms,
    /// link_latency_ms [min, max], regions, inter_region_latency_ms, link_bandwidth_mbps,
    /// link_loss, online_fraction, session_mean_s, ttl_s, sample_every_s, padding,
    /// mean_text_bytes, cover_messages_per_user_per_hour, batching_delay_ms; files:
    /// files_per_user_per_hour, file_median_bytes, file_size_sigma, file_ttl_s,
    /// device_bandwidth_mbps; push: phone_fraction, push_latency_ms [min, max], wake_window_s,
    /// push_max_delay_ms; calls: calls_per_user_per_hour, call_answer_probability,
    /// call_answer_mean_s, call_mean_s; and the faults [[crashes]] (node, at_s, down_s,
    /// disk_loss) and [[partitions]] (start_s, end_s, split); the engine: shards (the run's
    /// parts, run on every core; results depend on them, not on the threads).
    /// docs/simulations.md explains each; simulations/scenarios/ holds examples.
    Run {
        /// Scenario file (TOML); see simulations/scenarios/.
        scenario: Option<PathBuf>,
        /// The run's seed: the same scenario and seed give the same files.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Directory for the results (created if missing).
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Also run the scenario on real node processes (libp2p, RocksDB) in real time, crashes
        /// and partitions included, and compare with the model; writes real.json. Small
        /// scenarios only; partitions need root (one network namespace per node).
        #[arg(long)]
        real: bool,
        /// Threads for the model (default: one per core). The results are the same for any
        /// number; the scenario's `shards` is how many can work at once.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
    },
    /// Run a scenario once as given and once per privacy knob changed alone (cover traffic at
    /// 1, 10 and 100 dummies per message, a 10 s batching delay, padding flipped), on the same
    /// seed and so on the same messages; write knobs.md (a table), knobs.json and knobs.svg
    /// (linkability against bytes moved).
    Knobs {
        /// Scenario file (TOML); default: simulations/scenarios/privacy-knobs.toml.
        scenario: Option<PathBuf>,
        /// The seed every run shares.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Directory for the results (created if missing).
        #[arg(long, default_value = "results-knobs")]
        out: PathBuf,
    },
}

/// `hestia sim …`.
pub async fn run(cmd: SimCmd) -> Result<()> {
    match cmd {
        SimCmd::Run {
            scenario,
            seed,
            out,
            real: false,
            threads,
        } => simulate(scenario, seed, &out, threads.map(usize::from)),
        SimCmd::Run {
            scenario,
            seed,
            out,
            real: true,
            ..
        } => {
            let sc = load_scenario(&scenario)?;
            match real::run(sc, seed, &out).await? {
                Some(c) => real::report(&c, &scenario, &out),
                None => eprintln!(
                    "interrupted while the model ran; its partial results are in {}",
                    out.display()
                ),
            }
            Ok(())
        }
        SimCmd::Knobs {
            scenario,
            seed,
            out,
        } => sim_knobs(scenario, seed, &out),
    }
}

/// Reads a scenario file, or the bundled default when none is given.
fn load_scenario(path: &Option<PathBuf>) -> Result<hestia_simulations::Scenario> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => hestia_simulations::DEFAULT_SCENARIO.to_string(),
    };
    let mut sc = hestia_simulations::Scenario::from_toml(&text)?;
    if sc.name.is_empty() {
        sc.name = path
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
    }
    Ok(sc)
}

fn sim_knobs(scenario: Option<PathBuf>, seed: u64, out: &Path) -> Result<()> {
    use hestia_simulations::knobs;
    let sc = match &scenario {
        Some(_) => load_scenario(&scenario)?,
        None => hestia_simulations::Scenario::from_toml(hestia_simulations::KNOBS_SCENARIO)?,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let total = knobs::variants(&sc).len();
    let mut n = 0;
    let runs = knobs::sweep(
        &sc,
        seed,
        |knob| {
            n += 1;
            eprintln!("[{n}/{total}] {knob}");
        },
        || !stop.load(std::sync::atomic::Ordering::Relaxed),
    );
    if runs.len() < total {
        eprintln!(
            "interrupted: {} of {total} runs finished; writing those",
            runs.len()
        );
    }
    let title = format!("privacy knobs ({}; seed {seed})", sc.name);
    knobs::write_sweep(out, &title, &runs).with_context(|| format!("writing {}", out.display()))?;
    print!("{}", knobs::table(&runs));
    let file = scenario
        .map(|p| format!("{} ", p.display()))
        .unwrap_or_default();
    println!(
        "results in {} (knobs.md, knobs.json, knobs.svg)\nreplay with: hestia sim knobs {file}--seed {seed} --out {}",
        out.display(),
        out.display()
    );
    Ok(())
}

fn simulate(
    scenario: Option<PathBuf>,
    seed: u64,
    out: &Path,
    threads: Option<usize>,
) -> Result<()> {
    use hestia_simulations as sims;
    let sc = load_scenario(&scenario)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let start = std::time::Instant::now();
    let mut sim = sims::Sim::new(sc, seed);
    if let Some(n) = threads {
        sim = sim.threads(n);
    }
    let (shards, threads) = (sim.shards(), sim.thread_count());
    let horizon = sim.horizon_s().max(1.0);
    let o = sim.run(|t, events| {
        let rate = events as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let done = ((t / horizon) * 30.0).clamp(0.0, 30.0) as usize;
        eprint!(
            "\r[{}{}] {t:>7.0}/{horizon:.0} s simulated  {events:>10} events  {rate:>8.0} events/s ",
            "#".repeat(done),
            ".".repeat(30 - done)
        );
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    });
    eprintln!();
    if o.summary.interrupted {
        eprintln!("interrupted: the summary covers the simulated time reached");
    }
    sims::write_results(out, &o).with_context(|| format!("writing {}", out.display()))?;
    let s = &o.summary;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "scenario {} (seed {seed}): {} nodes, {} users, {:.0} s simulated",
        s.scenario, s.nodes, s.users, s.simulated_s
    );
    println!(
        "messages {}: delivered to device {:.1}%, expired {}, lost with a disk {}, \
         refused (user unknown after a disk loss) {}, pending {}",
        s.messages_sent,
        s.delivery_ratio * 100.0,
        s.undelivered_expired,
        s.undelivered_lost_with_disk,
        s.undelivered_refused_unknown_user,
        s.undelivered_pending
    );
    println!(
        "latency send→node p50 {:.0} ms p99 {:.0} ms; send→device p50 {:.0} ms p99 {:.0} ms",
        s.latency_send_to_node.p50_ms,
        s.latency_send_to_node.p99_ms,
        s.latency_send_to_device.p50_ms,
        s.latency_send_to_device.p99_ms
    );
    println!(
        "conversations linkable by one operator: {:.0}% (two colluding: {:.0}%); cover envelopes sent: {}",
        s.linkable_by_one_operator * 100.0,
        s.linkable_by_two_colluding_operators * 100.0,
        s.cover_envelopes_sent
    );
    for line in sims::sim::feature_lines(s) {
        println!("{line}");
    }
    println!(
        "{} events in {wall:.2} s wall ({:.0} events/s; {shards} shards on {threads} threads); results in {}",
        s.events,
        s.events as f64 / wall,
        out.display()
    );
    let file = scenario
        .map(|p| format!("{} ", p.display()))
        .unwrap_or_default();
    println!(
        "replay with: hestia sim run {file}--seed {seed} --out {}",
        out.display()
    );
    Ok(())
}
