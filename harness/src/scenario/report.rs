//! Reports of a run: the summary table on the terminal, JUnit XML and TAP 13 for CI, JSON
//! for tools, and the coverage table (checklist item → scenarios verifying it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::checklist::{self, Item};
use super::format::{ItemId, Scenario};
use super::runner::{Outcome, ScenarioReport, StepOutcome};

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "PASS",
        Outcome::Failed => "FAIL",
        Outcome::Unsupported => "UNSUPPORTED",
    }
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub unsupported: usize,
}

pub fn totals(reports: &[ScenarioReport]) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        match r.outcome {
            Outcome::Passed => t.passed += 1,
            Outcome::Failed => t.failed += 1,
            Outcome::Unsupported => t.unsupported += 1,
        }
    }
    t
}

/// The table printed at the end of `run`, with the failure details and replay commands.
pub fn summary_table(reports: &[ScenarioReport], master_seed: u64) -> String {
    let mut out = String::new();
    let wname = reports
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "{:<wname$}  {:<11}  {:>5}  {:>8}  checks",
        "scenario", "result", "steps", "time"
    );
    let _ = writeln!(out, "{}", "-".repeat(wname + 44));
    for r in reports {
        let done = r
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::Passed(_)))
            .count();
        let _ = writeln!(
            out,
            "{:<wname$}  {:<11}  {:>2}/{:<2}  {:>7.2}s  {}",
            r.name,
            outcome_word(r.outcome),
            done,
            r.steps.len(),
            r.duration.as_secs_f64(),
            r.verifies.len()
        );
    }
    for r in reports.iter().filter(|r| r.outcome == Outcome::Failed) {
        let _ = writeln!(out, "\nFAILED {} ({})", r.name, r.file.display());
        for line in r.failure_text().lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  replay: {}", r.replay);
    }
    let unsupported: Vec<&ScenarioReport> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Unsupported)
        .collect();
    if !unsupported.is_empty() {
        let _ = writeln!(
            out,
            "\nUNSUPPORTED (not run to the end, not counted as passed):"
        );
        for r in unsupported {
            let _ = writeln!(
                out,
                "  {}: {}",
                r.name,
                r.unsupported_text().unwrap_or_default()
            );
        }
    }
    let t = totals(reports);
    let _ = writeln!(
        out,
        "\n{}: {} scenarios, {} passed, {} failed, {} unsupported by this device build (seed {master_seed})",
        if t.failed == 0 { "PASSED" } else { "FAILED" },
        reports.len(),
        t.passed,
        t.failed,
        t.unsupported
    );
    out
}

/// JUnit XML: one test suite, one test case per scenario; unsupported = skipped.
pub fn junit(reports: &[ScenarioReport], master_seed: u64) -> Result<String, String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("chimney-harness");
    let mut suite = TestSuite::new("scenarios");
    suite.add_property(quick_junit::Property::new("seed", master_seed.to_string()));
    for r in reports {
        let status = match r.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Failed => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(
                    r.failure_text()
                        .lines()
                        .next()
                        .unwrap_or("failed")
                        .to_string(),
                );
                s.set_description(format!("{}replay: {}", r.failure_text(), r.replay));
                s
            }
            Outcome::Unsupported => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(r.unsupported_text().unwrap_or_default());
                s
            }
        };
        let mut tc = TestCase::new(r.name.clone(), status);
        tc.set_classname(r.file.display().to_string());
        tc.set_time(r.duration);
        suite.add_test_case(tc);
    }
    report.add_test_suite(suite);
    report.to_string().map_err(|e| format!("JUnit XML: {e}"))
}

/// TAP version 13. Unsupported scenarios are `not ok … # TODO` (not a pass, not a failure).
pub fn tap(reports: &[ScenarioReport]) -> String {
    let mut out = String::from("TAP version 13\n");
    let _ = writeln!(out, "1..{}", reports.len());
    for (i, r) in reports.iter().enumerate() {
        match r.outcome {
            Outcome::Passed => {
                let _ = writeln!(out, "ok {} - {}", i + 1, r.name);
            }
            Outcome::Unsupported => {
                let _ = writeln!(
                    out,
                    "not ok {} - {} # TODO {}",
                    i + 1,
                    r.name,
                    r.unsupported_text().unwrap_or_default().replace('#', "")
                );
            }
            Outcome::Failed => {
                let _ = writeln!(out, "not ok {} - {}", i + 1, r.name);
                let _ = writeln!(out, "  ---");
                let _ = writeln!(out, "  file: {:?}", r.file.display().to_string());
                let _ = writeln!(out, "  replay: {:?}", r.replay);
                let _ = writeln!(out, "  failures:");
                for l in r.failure_text().lines() {
                    let _ = writeln!(out, "    - {l:?}");
                }
                let _ = writeln!(out, "  ...");
            }
        }
    }
    out
}

#[derive(serde::Serialize)]
struct JsonStep<'a> {
    index: usize,
    name: &'a str,
    line: Option<usize>,
    result: &'static str,
    detail: String,
    ms: u128,
}

#[derive(serde::Serialize)]
struct JsonViolation {
    item: String,
    step: Option<usize>,
    seen: String,
}

#[derive(serde::Serialize)]
struct JsonScenario<'a> {
    name: &'a str,
    file: String,
    summary: &'a str,
    verifies: Vec<String>,
    seed: u64,
    outcome: Outcome,
    error: &'a Option<String>,
    ms: u128,
    steps: Vec<JsonStep<'a>>,
    violations: Vec<JsonViolation>,
    pcap: Option<String>,
    plots: Vec<String>,
    replay: &'a str,
}

#[derive(serde::Serialize)]
struct JsonRun<'a> {
    seed: u64,
    passed: usize,
    failed: usize,
    unsupported: usize,
    scenarios: Vec<JsonScenario<'a>>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// JSON for tools (schema: docs/scenarios.md).
pub fn json(reports: &[ScenarioReport], master_seed: u64) -> Result<String, String> {
    let t = totals(reports);
    let run = JsonRun {
        seed: master_seed,
        passed: t.passed,
        failed: t.failed,
        unsupported: t.unsupported,
        scenarios: reports
            .iter()
            .map(|r| JsonScenario {
                name: &r.name,
                file: r.file.display().to_string(),
                summary: &r.summary,
                verifies: r.verifies.iter().map(|i| i.to_string()).collect(),
                seed: r.seed,
                outcome: r.outcome,
                error: &r.error,
                ms: ms(r.duration),
                steps: r
                    .steps
                    .iter()
                    .map(|s| {
                        let (result, detail) = match &s.outcome {
                            StepOutcome::Passed(d) => ("passed", d.clone()),
                            StepOutcome::Failed(d) => ("failed", d.clone()),
                            StepOutcome::Unsupported(d) => ("unsupported", d.clone()),
                            StepOutcome::NotRun => ("not_run", String::new()),
                        };
                        JsonStep {
                            index: s.index,
                            name: s.name,
                            line: s.line,
                            result,
                            detail,
                            ms: ms(s.duration),
                        }
                    })
                    .collect(),
                violations: r
                    .violations
                    .iter()
                    .map(|v| JsonViolation {
                        item: v.item.to_string(),
                        step: v.step,
                        seen: v.seen.clone(),
                    })
                    .collect(),
                pcap: r.pcap.as_ref().map(|p| p.display().to_string()),
                plots: r.plots.iter().map(|p| p.display().to_string()).collect(),
                replay: &r.replay,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&run).map_err(|e| format!("JSON: {e}"))
}

/// Which scenarios verify each item: (name, runnable with this build).
pub fn coverage_map(scenarios: &[Scenario]) -> BTreeMap<ItemId, Vec<(String, bool)>> {
    let mut map: BTreeMap<ItemId, Vec<(String, bool)>> = BTreeMap::new();
    for s in scenarios {
        let runnable = super::runner::pending_reason(s).is_none();
        let mut ids: Vec<ItemId> = s.verifies.clone();
        ids.extend(s.steps.iter().flat_map(|st| st.verifies().iter().copied()));
        ids.sort();
        ids.dedup();
        for id in ids {
            map.entry(id).or_default().push((s.name.clone(), runnable));
        }
    }
    map
}

/// The `coverage` output: every item with its scenarios (`name*` = pending: the scenario
/// needs machinery this build lacks), then totals by section.
pub fn coverage(scenarios: &[Scenario], items: &[Item]) -> String {
    let map = coverage_map(scenarios);
    let mut out = String::new();
    let mut section = String::new();
    // (section, items, verified now, only pending)
    let mut by_section: Vec<(String, usize, usize, usize)> = Vec::new();
    for it in items {
        if it.section != section {
            section = it.section.clone();
            let _ = writeln!(out, "\n{section}");
            by_section.push((section.clone(), 0, 0, 0));
        }
        let who = map.get(&it.id);
        let now = who.is_some_and(|v| v.iter().any(|(_, r)| *r));
        let pending = !now && who.is_some();
        if let Some(last) = by_section.last_mut() {
            last.1 += 1;
            last.2 += usize::from(now);
            last.3 += usize::from(pending);
        }
        let mut text = it.text.clone();
        if text.chars().count() > 60 {
            text = text.chars().take(59).collect::<String>() + "…";
        }
        let names = who
            .map(|v| {
                v.iter()
                    .map(|(n, r)| if *r { n.clone() } else { format!("{n}*") })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "— not verified".to_string());
        let _ = writeln!(out, "  {} [{:<2}] {:<60}  {}", it.id, it.role, text, names);
    }
    let _ = writeln!(
        out,
        "\n(* = scenario pending: it needs the data path or a device policy this build lacks)"
    );
    let _ = writeln!(out, "\nTotals by section (verified now / items, + pending)");
    let (mut all, mut cov, mut pend) = (0, 0, 0);
    for (s, n, c, p) in &by_section {
        let _ = writeln!(
            out,
            "  {:<6} {:>3}/{:<3} +{:<3} {}",
            checklist::section_number(s),
            c,
            n,
            p,
            s.split_once(' ').map(|x| x.1).unwrap_or(s)
        );
        all += n;
        cov += c;
        pend += p;
    }
    let _ = writeln!(
        out,
        "  total  {cov}/{all} items verified by a runnable scenario, {pend} more by pending ones \
         ({} scenarios)",
        scenarios.len()
    );
    out
}
