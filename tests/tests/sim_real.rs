//! The model against the real stack: the same scenario run by `hestia sim run --real` on real
//! node processes (libp2p, RocksDB) and in the model must agree within the stated tolerances
//! (delivery ratio ±0.02; send-to-device latency CDFs within 0.05 given ±25 ms of slack), both
//! fault-free and through crashes, a lost disk and a partition (network namespaces: root).

use hestia_tests::hestia;
use std::path::Path;
use std::sync::Mutex;

/// One real-stack run at a time: they measure latency, and two would share the machine's cores.
static REAL_RUNS: Mutex<()> = Mutex::new(());

/// Runs `hestia sim run <scenario> --real` and returns real.json.
fn run_real(scenario: &Path, out: &Path, seed: &str) -> String {
    let _one = REAL_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let run = hestia(&[
        "sim",
        "run",
        scenario.to_str().unwrap(),
        "--real",
        "--seed",
        seed,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(out.join("real.json")).unwrap()
}

fn field(json: &str, name: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut cur = &v;
    for part in name.split('.') {
        cur = &cur[part];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{name} missing in {json}"))
}

#[test]
fn model_and_real_stack_agree_on_a_fault_free_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("check.toml");
    std::fs::write(
        &scenario,
        "name = \"check\"\nnodes = 5\nusers_per_node = 4\nduration_s = 8\ndrain_s = 10\n\
         messages_per_user_per_hour = 1800\nclient_latency_ms = 0\nlink_latency_ms = [0, 1]\n\
         link_loss = 0.0\nonline_fraction = 1.0\nsession_mean_s = 1000000\ncrashes = []\n\
         partitions = []\nsample_every_s = 1\n",
    )
    .unwrap();
    let json = run_real(&scenario, &dir.path().join("out"), "5");
    assert!(json.contains("\"agree\": true"), "{json}");
    assert!(json.contains("\"network\": \"loopback\""), "{json}");
    // Both sides carried traffic: a comparison of nothing would agree trivially.
    assert!(field(&json, "real.messages_sent") > 20.0, "{json}");
    assert_eq!(
        field(&json, "real.messages_sent"),
        field(&json, "model.messages_sent"),
        "the real devices replay the model's messages"
    );
}

#[test]
fn model_and_real_stack_agree_through_crashes_a_lost_disk_and_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/scenarios/real-faults.toml");
    let json = run_real(&scenario, &dir.path().join("out"), "2");
    assert!(json.contains("\"agree\": true"), "{json}");
    assert!(json.contains("\"network\": \"namespaces\""), "{json}");
    assert!(field(&json, "real.messages_sent") > 300.0, "{json}");
    // The faults bit on both sides: messages into the partition and to the crashed nodes
    // waited seconds, not milliseconds.
    assert!(field(&json, "real.p99_ms") > 2_000.0, "{json}");
    assert!(field(&json, "model.p99_ms") > 2_000.0, "{json}");
    // Every message is listed with both fates, and the namespaces are gone.
    let csv = std::fs::read_to_string(dir.path().join("out/real_messages.csv")).unwrap();
    assert!(csv.lines().count() as f64 > field(&json, "model.messages_sent"));
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    // The run removes its own, and any a killed run left, before it starts.
    let left = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(!left.contains("hsim"), "namespaces left behind: {left}");
}

#[test]
fn real_mode_refuses_what_it_cannot_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("lossy.toml");
    // Defaults: 1% link loss and users online half the time.
    std::fs::write(
        &scenario,
        "nodes = 3\nusers_per_node = 2\nduration_s = 5\ndrain_s = 5\n",
    )
    .unwrap();
    let run = hestia(&["sim", "run", scenario.to_str().unwrap(), "--real"]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("link_loss") && err.contains("offline"),
        "{err}"
    );
}
