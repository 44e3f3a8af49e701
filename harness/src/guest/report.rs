//! What the guest agent reports on the serial console, and how the host side reads it back.
//!
//! Lines start with `CHIMNEY ` so they can be found among firmware and kernel output:
//! - `CHIMNEY agent ready uptime=<s> …`: the NIC is the agent's (bring-up done);
//! - `CHIMNEY step <scenario> <n> <name> start`: progress (also a hook for fault injection);
//! - TAP 13 lines (`TAP version 13`, `1..N`, `ok N - name`, `not ok N - name`, `# …`);
//! - `CHIMNEY summary <json>`: one line, [`GuestSummary`], the last thing before power-off.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestOutcome {
    Passed,
    Failed,
    Unsupported,
    NotRun,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStep {
    pub index: usize,
    pub name: String,
    pub outcome: GuestOutcome,
    pub detail: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestScenario {
    pub name: String,
    pub outcome: GuestOutcome,
    pub steps: Vec<GuestStep>,
    pub seconds: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestSummary {
    /// `chimney-harness <version> guest-agent`.
    pub agent: String,
    /// The guest's uptime when the NIC was ready and when the summary was written.
    pub ready_uptime_s: f64,
    pub uptime_s: f64,
    pub scenarios: Vec<GuestScenario>,
    /// A failure that ended the whole run (bring-up failed, device gone).
    pub fatal: Option<String>,
}

impl GuestSummary {
    pub fn count(&self, o: GuestOutcome) -> usize {
        self.scenarios.iter().filter(|s| s.outcome == o).count()
    }

    /// Passed only if nothing failed, nothing was fatal and at least one scenario passed.
    pub fn passed(&self) -> bool {
        self.fatal.is_none()
            && self.count(GuestOutcome::Failed) == 0
            && self.count(GuestOutcome::NotRun) == 0
            && self.count(GuestOutcome::Passed) > 0
    }

    /// The TAP 13 lines for this summary.
    pub fn tap(&self) -> String {
        let mut out = format!("TAP version 13\n1..{}\n", self.scenarios.len());
        for (i, s) in self.scenarios.iter().enumerate() {
            let status = match s.outcome {
                GuestOutcome::Passed => "ok".to_string(),
                GuestOutcome::Unsupported => "ok".to_string(),
                _ => "not ok".to_string(),
            };
            let directive = match s.outcome {
                GuestOutcome::Unsupported => s
                    .steps
                    .iter()
                    .find(|st| st.outcome == GuestOutcome::Unsupported)
                    .map(|st| format!(" # SKIP unsupported: step {} `{}`", st.index + 1, st.name))
                    .unwrap_or_else(|| " # SKIP unsupported".into()),
                _ => String::new(),
            };
            out.push_str(&format!("{status} {} - {}{directive}\n", i + 1, s.name));
            for st in &s.steps {
                if st.outcome != GuestOutcome::NotRun {
                    out.push_str(&format!(
                        "# step {} {} {:?} ({:.1} s): {}\n",
                        st.index + 1,
                        st.name,
                        st.outcome,
                        st.seconds,
                        st.detail.replace('\n', " ")
                    ));
                }
            }
        }
        if let Some(f) = &self.fatal {
            out.push_str(&format!("Bail out! {f}\n"));
        }
        out
    }
}

/// The prefix of the summary line.
pub const SUMMARY_PREFIX: &str = "CHIMNEY summary ";

/// Find the summary in a console log (the last complete summary line wins). Kernel
/// messages may share a line with it only before the marker; a line not yet ended by a
/// newline is not looked at; a line cut short is an error, not a summary.
pub fn parse_summary(console: &str) -> Option<Result<GuestSummary, String>> {
    // Only whole lines: the console file is read while QEMU is still writing it.
    let complete = &console[..console.rfind('\n').map_or(0, |i| i + 1)];
    let line = complete
        .lines()
        .rev()
        .find(|l| l.contains(SUMMARY_PREFIX))?;
    let at = line.find(SUMMARY_PREFIX)? + SUMMARY_PREFIX.len();
    Some(
        serde_json::from_str(line[at..].trim_end_matches('\r'))
            .map_err(|e| format!("guest summary is not valid JSON ({e}): {}", &line[at..])),
    )
}

/// Value of `name=value` in a console line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestSummary {
        GuestSummary {
            agent: "chimney-harness 0.1.0 guest-agent".into(),
            ready_uptime_s: 3.5,
            uptime_s: 20.0,
            scenarios: vec![GuestScenario {
                name: "a".into(),
                outcome: GuestOutcome::Passed,
                steps: vec![GuestStep {
                    index: 0,
                    name: "open".into(),
                    outcome: GuestOutcome::Passed,
                    detail: "ok".into(),
                    seconds: 0.5,
                }],
                seconds: 1.0,
                seed: 7,
            }],
            fatal: None,
        }
    }

    #[test]
    fn summary_line_is_found_among_kernel_output_and_round_trips() {
        let s = sample();
        let console = format!(
            "SeaBIOS\r\n[ 1.0] uio: loaded\nCHIMNEY agent ready uptime=3.5\n\
             {SUMMARY_PREFIX}{}\r\n[ 2.0] reboot: Power down\n",
            serde_json::to_string(&s).expect("json")
        );
        let got = parse_summary(&console)
            .expect("summary line")
            .expect("valid");
        assert_eq!(got, s);
        assert!(got.passed());
    }

    #[test]
    fn cut_summary_line_is_an_error_not_a_pass() {
        let console = format!("{SUMMARY_PREFIX}{{\"agent\":\"x\",\"scen\n");
        assert!(matches!(parse_summary(&console), Some(Err(_))));
        assert!(parse_summary("no summary here\n").is_none());
    }

    #[test]
    fn summary_line_still_being_written_is_not_read_yet() {
        let json = serde_json::to_string(&sample()).expect("json");
        let half = format!(
            "CHIMNEY agent ready\n{SUMMARY_PREFIX}{}",
            &json[..json.len() / 2]
        );
        assert!(
            parse_summary(&half).is_none(),
            "a line without its newline was read"
        );
        let whole = format!("{SUMMARY_PREFIX}{json}\n");
        assert_eq!(parse_summary(&whole), Some(Ok(sample())));
    }

    #[test]
    fn tap_marks_failed_scenarios_not_ok_and_fatal_as_bail_out() {
        let mut s = sample();
        s.scenarios[0].outcome = GuestOutcome::Failed;
        s.fatal = Some("device gone".into());
        let tap = s.tap();
        assert!(tap.contains("1..1\nnot ok 1 - a\n"), "tap was:\n{tap}");
        assert!(tap.contains("Bail out! device gone"), "tap was:\n{tap}");
        assert!(!s.passed());
    }
}
