//! The JSON that `--json FILE` writes parses back into the report type, with the figures
//! the run was asked for. Runs the real binary on a real device and namespace (root), with
//! sizes that take a few seconds; nothing here is timed.

use chimney_bench::report::Report;

#[test]
fn quick_control_plane_run_writes_json_that_parses_with_every_item_3_figure() {
    let dir = std::env::temp_dir().join(format!("chimney-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("bench.json");
    // The device the harness tests use (test profile; built once per process by cargo).
    let device = chimney_harness::device_process::device_binary().expect("chimney-device");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chimney-bench"))
        .env("CHIMNEY_DEVICE_BIN", device)
        .args([
            "--quick",
            "--only",
            "3",
            "--rounds",
            "20",
            "--bulk",
            "200,10000",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run chimney-bench");
    assert!(
        out.status.success(),
        "chimney-bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let report = Report::from_json(&text).expect("JSON parses as a Report");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.suite, "chimney-bench");
    assert!(report.quick, "quick flag recorded");
    let keys: Vec<&str> = report.figures.iter().map(|f| f.key.as_str()).collect();
    for k in [
        "initiate_p50_us",
        "initiate_p99_us",
        "terminate_p50_us",
        "terminate_p99_us",
        "bulk_offload_200_per_s",
        "bulk_offload_10000_per_s",
        "idle_conn_bytes_10000",
    ] {
        assert!(keys.contains(&k), "figure {k} missing; figures: {keys:?}");
    }
    for f in &report.figures {
        assert!(
            f.value > 0.0 && f.baseline.as_ref().is_some_and(|b| b.value > 0.0),
            "figure {} has no positive value and baseline: {f:?}",
            f.key
        );
        assert!(f.ratio.is_some(), "figure {} has no ratio", f.key);
    }
    // 20 round trips were asked for; the note says how many were measured.
    let init = &report.figures[keys
        .iter()
        .position(|k| *k == "initiate_p50_us")
        .unwrap_or(0)];
    assert_eq!(init.note, "20 round trips", "initiate note");
}
