//! Scenarios through the real device (root: namespace, TAP): every library scenario passes
//! (offloaded data, both receive modes, the loss/reorder matrix included), one with a step
//! this build cannot run would be reported unsupported (never passed), and a
//! scenario expecting the wrong status fails with a message a newcomer understands.

use std::path::Path;

use chimney_harness::scenario::{self, format, run_scenario, Outcome, RunOptions, StepOutcome};

fn opts() -> RunOptions {
    let seed = std::env::var("CHIMNEY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with CHIMNEY_SEED={seed})");
    RunOptions {
        seed,
        ..RunOptions::default()
    }
}

/// Run every scenario under `harness/scenarios/<dir>`: each passes, or is reported
/// unsupported when the file alone says this build cannot run it (never passed).
fn library_dir_passes(dir: &str) {
    let opts = opts();
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(dir);
    let files = format::discover(&[lib]).expect("library listed");
    assert!(!files.is_empty(), "no scenarios under {dir}");
    let mut problems = Vec::new();
    for f in &files {
        let sc = scenario::load(f).expect("library scenario loads");
        let r = run_scenario(&sc, &opts);
        println!("{:?} {} ({:.2?})", r.outcome, r.name, r.duration);
        // Judged from the file alone: a step this build cannot run (e.g. inject_event).
        let want = if scenario::runner::pending_reason(&sc).is_some() {
            Outcome::Unsupported
        } else {
            Outcome::Passed
        };
        if r.outcome != want {
            problems.push(format!(
                "{}: expected {want:?}, seen {:?}\n{}{}\nreplay: {}",
                r.name,
                r.outcome,
                r.failure_text(),
                r.unsupported_text().unwrap_or_default(),
                r.replay
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The whole library, one test per directory (nextest runs them side by side).

#[test]
fn library_control_scenarios_pass() {
    library_dir_passes("control");
}

#[test]
fn library_host_scenarios_pass() {
    library_dir_passes("host");
}

#[test]
fn library_data_scenarios_pass() {
    library_dir_passes("data");
}

#[test]
fn library_impair_scenarios_pass() {
    library_dir_passes("impair");
}

#[test]
fn wrong_expected_status_fails_naming_step_item_expected_and_seen() {
    let text = r#"
summary = "expects SUCCESS where the device must say OFFLOAD_TCP_ENTRIES"
verifies = ["C-044"]
[device]
max_tcp = 1
[[step]]
offload_set = { connections = 1, family = "ipv4" }
[[step]]
offload = { blocks = [ { linker = "path4", dependent = 1 }, { new = "tcp", name = "x", local_port = 9000 } ], expect_blocks = ["SUCCESS", "SUCCESS"], verifies = ["C-044"] }
"#;
    let sc = scenario::parse(Path::new("wrong-status.toml"), text).expect("parses");
    let r = run_scenario(&sc, &opts());
    assert_eq!(r.outcome, Outcome::Failed, "steps: {:?}", r.steps);
    let msg = r.failure_text();
    for needle in [
        "step 2 `offload` (line 8)",
        "offload block 0: expected status NDIS_STATUS_SUCCESS",
        "seen NDIS_STATUS_FAILURE",
        "C-044",
    ] {
        assert!(
            msg.contains(needle),
            "expected `{needle}` in the failure text:\n{msg}"
        );
    }
    assert!(
        r.replay.contains("--seed"),
        "no replay command: {}",
        r.replay
    );
}

#[test]
fn wrong_expected_error_reason_fails_with_both_reasons() {
    let text = r#"
summary = "expects the wrong reason for a cycle"
driver = "ring"
verifies = ["C-035"]
[[step]]
bad_request = { kind = "cycle", expect_error = "LayerOrder", verifies = ["C-035"] }
"#;
    let sc = scenario::parse(Path::new("wrong-reason.toml"), text).expect("parses");
    let r = run_scenario(&sc, &opts());
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = r.failure_text();
    assert!(
        msg.contains("expected an ERROR completion with reason LayerOrder, seen reason LinkCycle"),
        "failure text:\n{msg}"
    );
}

#[test]
fn unsupported_step_stops_the_scenario_and_is_not_a_pass() {
    let text = r#"
summary = "a data step after a working one"
verifies = ["C-142"]
[[step]]
offload_set = { connections = 1, family = "ipv4" }
[[step]]
send = { conn = "tcp0", bytes = 10 }
[[step]]
terminate = { objects = "all" }
"#;
    let sc = scenario::parse(Path::new("unsupported.toml"), text).expect("parses");
    let r = run_scenario(&sc, &opts());
    assert_eq!(r.outcome, Outcome::Unsupported, "{}", r.failure_text());
    assert!(
        matches!(r.steps[0].outcome, StepOutcome::Passed(_)),
        "{:?}",
        r.steps[0]
    );
    match &r.steps[1].outcome {
        StepOutcome::Unsupported(why) => {
            assert!(why.contains("unsupported by this device build"), "{why}")
        }
        other => panic!("step 2: expected Unsupported, seen {other:?}"),
    }
    assert_eq!(r.steps[2].outcome, StepOutcome::NotRun);
}

#[test]
fn wrong_expected_peer_hash_fails_with_both_hashes_and_the_step() {
    let wrong = "00".repeat(32);
    let text = format!(
        r#"
summary = "the peer's SHA-256 is not what the scenario claims"
verifies = ["C-202"]
[[step]]
open = {{ name = "c", family = "ipv4", mode = "active", port = 5101 }}
[[step]]
send = {{ conn = "c", bytes = 100000 }}
[[step]]
disconnect = {{ conn = "c", kind = "graceful", peer_sha256 = "{wrong}", verifies = ["C-202"] }}
"#
    );
    let sc = scenario::parse(Path::new("wrong-hash.toml"), &text).expect("parses");
    let r = run_scenario(&sc, &opts());
    assert_eq!(r.outcome, Outcome::Failed, "{:?}", r.steps);
    let msg = r.failure_text();
    for needle in [
        "step 3 `disconnect` (line 8)",
        "peer received 100000 bytes with SHA-256 ",
        &format!("expected 100000 bytes with SHA-256 {wrong}"),
        "C-202",
    ] {
        assert!(
            msg.contains(needle),
            "expected `{needle}` in the failure text:\n{msg}"
        );
    }
}

/// Planted device fault (issue 4's policy `[bugs] event_after_terminate`): the harness
/// reports C-114 with what it saw; the same scenario against a correct target passes.
#[test]
fn planted_event_after_terminate_is_reported_as_c114() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/planted");
    let opts = opts();
    let good = scenario::load(&dir.join("correct-target.toml")).expect("loads");
    let r = run_scenario(&good, &opts);
    assert_eq!(
        r.outcome,
        Outcome::Passed,
        "correct target must pass:\n{}",
        r.failure_text()
    );
    let bad = scenario::load(&dir.join("event-after-terminate.toml")).expect("loads");
    let r = run_scenario(&bad, &opts);
    assert_eq!(
        r.outcome,
        Outcome::Failed,
        "planted fault not caught: {:?}",
        r.steps
    );
    let msg = r.failure_text();
    for needle in [
        "step 5 `expect_no_events`",
        "expected no event, seen TcpEvent",
        "C-114",
    ] {
        assert!(msg.contains(needle), "expected `{needle}` in:\n{msg}");
    }
}
