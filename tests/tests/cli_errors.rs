//! Bad input on the command line: one line of error, a non-zero exit, nothing changed.

use hestia_tests::hestia;

fn fails_with_one_line(args: &[&str], needle: &str) {
    // Device commands get a fresh, empty home; the others refuse --home, so get none.
    let home = tempfile::tempdir().unwrap();
    let device_command = !matches!(
        args.first(),
        Some(&("sim" | "node" | "bootstrap" | "bench" | "demo"))
    );
    let out = if device_command {
        hestia(&[&["--home", home.path().to_str().unwrap()], args].concat())
    } else {
        hestia(args)
    };
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 || args.is_empty(),
        "{args:?}: not one line: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn bad_cli_input_gives_one_line_and_nonzero_exit() {
    fails_with_one_line(&["send", "bob", "hi"], "no account here yet");
    fails_with_one_line(&["inbox"], "no account here yet");
    fails_with_one_line(
        &[
            "account",
            "create",
            "--node",
            "/ip4/127.0.0.1/tcp/1",
            "--name",
            "alice",
        ],
        "must end in /p2p/",
    );
    fails_with_one_line(
        &[
            "account",
            "create",
            "--node",
            "not-an-address",
            "--name",
            "a",
        ],
        "error",
    );
    fails_with_one_line(&["send", "bob", "hi", "--ttl", "0"], "error");
    // A home node that is not running: one short reason, not libp2p's list of dial errors.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let node = format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWEuMrweGVVStisQ2UbKhnUU8P9A3yxLqwHiXrZAK2t8tA"
    );
    fails_with_one_line(
        &["account", "create", "--node", &node, "--name", "alice"],
        "connection refused (is the node running?)",
    );
}

#[test]
fn bad_contact_input_is_refused() {
    let home = tempfile::tempdir().unwrap();
    // A contact needs an account; with none, the error says so rather than anything vaguer.
    let out = hestia(&[
        "--home",
        home.path().to_str().unwrap(),
        "contact",
        "add",
        "bob",
        "zzz",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

#[test]
fn sim_run_writes_results_and_refuses_bad_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        "# Question: does a tiny federation deliver?\nname = \"tiny\"\nnodes = 3\nusers_per_node = 3\n\
         duration_s = 300\ndrain_s = 600\nmessages_per_user_per_hour = 60\ncrashes = []\npartitions = []\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = hestia(&[
        "sim",
        "run",
        scenario.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("replay with: hestia sim run") && stdout.contains("--seed 3"),
        "{stdout}"
    );
    for f in [
        "summary.json",
        "scenario.toml",
        "timeseries.csv",
        "operators.csv",
        "latency_cdf.svg",
        "held.svg",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 0, "{f}");
    }
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"scenario\": \"tiny\""), "{summary}");

    std::fs::write(&scenario, "nodes = 3\nlink_loss = 3\n").unwrap();
    fails_with_one_line(&["sim", "run", scenario.to_str().unwrap()], "probabilities");
    fails_with_one_line(
        &["sim", "run", "/nonexistent/scenario.toml"],
        "reading /nonexistent/scenario.toml",
    );
}

#[test]
fn colours_only_when_asked_or_on_a_terminal() {
    let esc = |args: &[&str]| {
        let out = hestia(args);
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).contains('\u{1b}')
    };
    // The tests' stdout is a pipe: auto means none.
    assert!(!esc(&["sim", "run", "--help"]));
    assert!(!esc(&["--color", "never", "sim", "run", "--help"]));
    assert!(esc(&["--color", "always", "sim", "run", "--help"]));
    assert!(esc(&["sim", "run", "--help", "--color=always"]));
}
