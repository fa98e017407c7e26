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
fn model_and_real_stack_agree_on_file_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/scenarios/real-files.toml");
    let json = run_real(&scenario, &dir.path().join("out"), "3");
    assert!(json.contains("\"agree\": true"), "{json}");
    // Files moved on both sides: uploaded, announced, fetched across the federation.
    assert!(field(&json, "files.real.begun") >= 5.0, "{json}");
    assert_eq!(
        field(&json, "files.real.begun"),
        field(&json, "files.model.begun"),
        "the real devices begin the model's files"
    );
    assert_eq!(field(&json, "files.real.fetched_ratio"), 1.0, "{json}");
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
    // Files are reproduced, but not more than a real run can carry.
    std::fs::write(
        &scenario,
        "nodes = 3\nusers_per_node = 2\nduration_s = 60\ndrain_s = 5\nlink_loss = 0.0\n\
         online_fraction = 1.0\nfiles_per_user_per_hour = 100000\n",
    )
    .unwrap();
    let run = hestia(&["sim", "run", scenario.to_str().unwrap(), "--real"]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("at most about 500 files"), "{err}");
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the command may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

fn run_dirs_of(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("hestia-real-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Starts a minute-long `--real` run and waits until its nodes are up and its devices send.
fn start_long_real_run(dir: &Path) -> (std::process::Child, std::path::PathBuf, Vec<u32>) {
    let scenario = dir.join("long.toml");
    std::fs::write(
        &scenario,
        "name = \"long\"\nnodes = 3\nusers_per_node = 2\nduration_s = 60\ndrain_s = 10\n\
         messages_per_user_per_hour = 600\nlink_loss = 0.0\nonline_fraction = 1.0\n\
         crashes = []\npartitions = []\n",
    )
    .unwrap();
    let out = dir.join("out");
    let log = dir.join("run.log");
    let child = std::process::Command::new(hestia_tests::hestia_bin())
        .args(["sim", "run", scenario.to_str().unwrap(), "--real", "--out"])
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("run.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    hestia_tests::wait_for_text(&log, "real stack:");
    let nodes = children_of(child.id());
    assert_eq!(nodes.len(), 3, "three node processes");
    assert_eq!(run_dirs_of(child.id()).len(), 1);
    (child, out, nodes)
}

#[test]
fn an_interrupted_real_run_cleans_up_and_writes_what_it_reached() {
    let _one = REAL_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, out, nodes) = start_long_real_run(dir.path());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = hestia_tests::wait_exit(&mut child, 30, "the interrupted run");
    let stdout = std::fs::read_to_string(dir.path().join("run.out")).unwrap();
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("interrupted after"), "{stdout}");
    assert!(stdout.contains("replay with: hestia sim run"), "{stdout}");
    let json = std::fs::read_to_string(out.join("real.json")).unwrap();
    assert!(json.contains("\"interrupted\": true"), "{json}");
    assert!(json.contains("\"agree\": false"), "{json}");
    assert!(field(&json, "real_s") < 60.0, "{json}");
    // The model's files are there too, and the plot carries both curves.
    let svg = std::fs::read_to_string(out.join("latency_cdf.svg")).unwrap();
    assert!(svg.contains("real stack") && svg.contains("model"), "{svg}");
    assert!(out.join("summary.json").exists());
    for n in nodes {
        assert!(!alive(n), "node process {n} outlived the run");
    }
    assert!(
        run_dirs_of(child.id()).is_empty(),
        "the temporary directory is left"
    );
}

#[test]
fn a_killed_real_run_takes_its_nodes_along_and_the_next_run_removes_its_directory() {
    let one = REAL_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _, nodes) = start_long_real_run(dir.path());
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    // The parent-death signal: each node is gone within moments, without any cleanup code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nodes.iter().any(|n| alive(*n)) {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes outlived a SIGKILLed harness"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(run_dirs_of(pid).len(), 1, "nothing could remove it yet");
    // `run_real` takes the lock itself.
    drop(one);
    // The next run (a short one) removes what the killed one left.
    let scenario = dir.path().join("short.toml");
    std::fs::write(
        &scenario,
        "name = \"short\"\nnodes = 2\nusers_per_node = 1\nduration_s = 1\ndrain_s = 1\n\
         link_loss = 0.0\nonline_fraction = 1.0\ncrashes = []\npartitions = []\n",
    )
    .unwrap();
    run_real(&scenario, &dir.path().join("out2"), "1");
    assert!(
        run_dirs_of(pid).is_empty(),
        "the killed run's directory is left"
    );
}
