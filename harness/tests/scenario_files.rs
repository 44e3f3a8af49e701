//! Scenario files: the shipped library loads, and each kind of bad file gives exactly one
//! error naming the file, the line and the key. No root needed.

use std::path::{Path, PathBuf};

use chimney_harness::scenario::{self, checklist, format, report, ScenarioError};

const HEAD: &str = "summary = \"test\"\nverifies = [\"C-041\"]\n";

fn load_text(text: &str) -> Result<scenario::Scenario, ScenarioError> {
    scenario::parse(Path::new("t.toml"), text)
}

fn error_of(text: &str) -> ScenarioError {
    match load_text(text) {
        Ok(s) => panic!("expected this file to be refused, it loaded as {s:?}:\n{text}"),
        Err(e) => e,
    }
}

fn assert_error(e: &ScenarioError, line: usize, key: Option<&str>, needle: &str) {
    let shown = e.to_string();
    assert_eq!(
        e.line,
        Some(line),
        "line: expected {line}, seen {:?} in `{shown}`",
        e.line
    );
    assert_eq!(
        e.key.as_deref(),
        key,
        "key: expected {key:?}, seen {:?} in `{shown}`",
        e.key
    );
    assert!(
        e.message.contains(needle),
        "message: expected it to contain `{needle}`, seen `{}`",
        e.message
    );
    assert!(
        shown.starts_with(&format!("t.toml:{line}: ")),
        "display: `{shown}`"
    );
}

#[test]
fn toml_syntax_error_names_the_line() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\noffload_set = {{ connections = 2\n"
    ));
    assert_error(&e, 4, None, "");
    assert!(!e.message.is_empty(), "syntax error without a message");
}

#[test]
fn unknown_step_is_refused_with_the_known_ones_listed() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\nofload_set = {{ connections = 2 }}\n"
    ));
    assert_error(&e, 4, Some("step[0]"), "unknown variant `ofload_set`");
    assert!(
        e.message.contains("offload_set"),
        "known steps not listed: {}",
        e.message
    );
}

#[test]
fn unknown_key_inside_a_step_is_refused() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\noffload_set = {{ connections = 2, colour = \"red\" }}\n"
    ));
    assert_error(&e, 4, Some("step[0].offload_set"), "colour");
}

#[test]
fn wrong_type_names_the_key_path() {
    let e = error_of(&format!(
        "{HEAD}\n[[step]]\noffload_set = {{ connections = \"many\" }}\n"
    ));
    assert_error(
        &e,
        5,
        Some("step[0].offload_set.connections"),
        "invalid type: string \"many\", expected u32",
    );
}

#[test]
fn impossible_number_names_the_key_and_the_range() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\nquery = {{ objects = \"all\" }}\n[[step]]\noffload_set = {{ connections = 0 }}\n"
    ));
    assert_error(
        &e,
        6,
        Some("step[1].offload_set.connections"),
        "0 is impossible: 1..=",
    );
}

#[test]
fn unknown_status_name_is_refused() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\noffload_set = {{ connections = 1, expect = \"SUCESS\" }}\n"
    ));
    assert_error(
        &e,
        4,
        Some("step[0].offload_set.expect"),
        "unknown NDIS status `SUCESS`",
    );
}

#[test]
fn unknown_checklist_item_is_refused() {
    let e = error_of("summary = \"x\"\nverifies = [\"C-235\"]\n[[step]]\nexpect_no_events = {}\n");
    assert_error(
        &e,
        2,
        Some("verifies[0]"),
        "`C-235` is not a checklist item",
    );
}

#[test]
fn block_link_out_of_the_tree_is_refused() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\noffload = {{ blocks = [ {{ new = \"neighbor\", name = \"n\", dependent = 3 }} ] }}\n"
    ));
    assert_error(
        &e,
        4,
        Some("step[0].offload.blocks[0].dependent"),
        "3 is impossible",
    );
}

#[test]
fn missing_steps_and_missing_items_are_refused() {
    let e = error_of("summary = \"x\"\nverifies = [\"C-001\"]\n");
    assert!(e.message.contains("missing field `step`"), "seen: {e}");
    let e = error_of("summary = \"x\"\nverifies = []\n[[step]]\nexpect_no_events = {}\n");
    assert_eq!(e.key.as_deref(), Some("verifies"), "seen: {e}");
}

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn every_library_scenario_loads_and_names_are_unique() {
    let files = format::discover(&[library()]).expect("library listed");
    assert!(
        files.len() >= 16,
        "expected at least 16 scenarios, found {}",
        files.len()
    );
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        let s = scenario::load(f).unwrap_or_else(|e| panic!("library file refused: {e}"));
        assert!(
            names.insert(s.name.clone()),
            "duplicate scenario name {}",
            s.name
        );
        assert!(!s.verifies.is_empty(), "{} verifies nothing", s.name);
    }
}

#[test]
fn coverage_lists_all_234_items_with_section_totals() {
    let files = format::discover(&[library()]).expect("library listed");
    let scenarios: Vec<_> = files
        .iter()
        .map(|f| scenario::load(f).expect("loads"))
        .collect();
    let text = report::coverage(&scenarios, &checklist::items());
    let item_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("C-"))
        .count();
    assert_eq!(item_lines, 234, "coverage output should list 234 items");
    assert!(text.contains("6.15"), "section 6.15 missing from totals");
    let total = text.lines().last().unwrap_or_default();
    assert!(
        total.contains("/234 items verified by a runnable scenario"),
        "last line: {total}"
    );
    // Offloaded data runs now: its scenarios count without the pending mark; a scenario
    // with a step this build cannot run (inject_event) is marked `name*`, pending.
    let line_of = |item: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(item))
            .unwrap_or_default()
            .to_string()
    };
    let c142 = line_of("C-142");
    assert!(
        c142.contains("host-stack-offload-transfer-v4") && !c142.contains("v4*"),
        "C-142 line: {c142}"
    );
    // Pause/upload-all runs now (device policy): verified, not pending.
    let c129 = line_of("C-129");
    assert!(
        c129.contains("pause-resume-upload-all") && !c129.contains("all*"),
        "C-129 line: {c129}"
    );
    // A scenario with a step this build cannot run is pending.
    let pending = scenario::parse(
        std::path::Path::new("pending.toml"),
        "summary = \"x\"\nverifies = [\"C-234\"]\n[[step]]\ninject_event = { kind = \"upload_all\" }\n",
    )
    .expect("parses");
    let text2 = report::coverage(&[pending], &checklist::items());
    let c234 = text2
        .lines()
        .find(|l| l.trim_start().starts_with("C-234"))
        .unwrap_or_default();
    assert!(c234.contains("pending*"), "C-234 line: {c234}");
    // The bulk scenario verifies C-009; coverage must say so.
    let c009 = text
        .lines()
        .find(|l| l.contains("C-009"))
        .unwrap_or_default();
    assert!(c009.contains("bulk-1024"), "C-009 line: {c009}");
}

#[test]
fn ring_level_steps_need_driver_ring() {
    let e = error_of(&format!(
        "{HEAD}[[step]]\nbad_request = {{ kind = \"cycle\", expect_error = \"LinkCycle\" }}\n"
    ));
    assert_error(&e, 4, Some("step[0].bad_request.kind"), "driver = \"ring\"");
    let ok = load_text(&format!(
        "driver = \"ring\"\n{HEAD}[[step]]\nbad_request = {{ kind = \"cycle\", expect_error = \"LinkCycle\" }}\n"
    ));
    assert!(ok.is_ok(), "with driver = ring it loads: {ok:?}");
}
