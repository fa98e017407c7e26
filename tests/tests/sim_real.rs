//! The model against the real stack: the same fault-free scenario run by `hestia sim run --real`
//! on real nodes (libp2p over loopback, RocksDB) and in the model must agree within the stated
//! tolerances (delivery ratio ±0.02, send-to-device p50 and p90 ±25 ms).

use hestia_tests::hestia;

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
    let out = dir.path().join("out");
    let run = hestia(&[
        "sim",
        "run",
        scenario.to_str().unwrap(),
        "--real",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read_to_string(out.join("real.json")).unwrap();
    assert!(json.contains("\"agree\": true"), "{json}");
    // Both sides carried traffic: a comparison of nothing would agree trivially.
    assert!(!json.contains("\"messages_sent\": 0,"), "{json}");
}

#[test]
fn real_mode_refuses_faulty_or_large_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("faulty.toml");
    std::fs::write(
        &scenario,
        "nodes = 3\nusers_per_node = 2\nduration_s = 5\ndrain_s = 5\n",
    )
    .unwrap();
    let run = hestia(&["sim", "run", scenario.to_str().unwrap(), "--real"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("fault-free"));
}
