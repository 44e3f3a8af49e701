//! The figures of one run: each measured value next to the baseline measured in the same
//! run and their ratio; printed as a table and written as JSON (`--json FILE`).

use serde::{Deserialize, Serialize};

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable key for tracking across runs, e.g. `offload_tx_throughput`.
    pub key: String,
    /// Issue 8 item (1..=5).
    pub item: u8,
    /// What was measured, for people.
    pub what: String,
    pub value: f64,
    pub unit: String,
    /// The baseline measured in the same run, if this figure has one.
    pub baseline: Option<Baseline>,
    /// value / baseline.value.
    pub ratio: Option<f64>,
    /// The target for the ratio, if any (e.g. ">= 0.5").
    pub target: Option<String>,
    /// Method details, sample counts, why a figure is missing.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub what: String,
    pub value: f64,
    pub unit: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub suite: String,
    pub version: u32,
    pub quick: bool,
    pub command: String,
    pub machine: String,
    /// Seconds since the Unix epoch at start.
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub figures: Vec<Figure>,
}

impl Figure {
    /// A non-finite value (nothing measured) is stored as 0 with a note: JSON has no NaN.
    pub fn new(key: &str, item: u8, what: &str, value: f64, unit: &str) -> Figure {
        Figure {
            key: key.to_string(),
            item,
            what: what.to_string(),
            value: if value.is_finite() { value } else { 0.0 },
            unit: unit.to_string(),
            baseline: None,
            ratio: None,
            target: None,
            note: if value.is_finite() {
                String::new()
            } else {
                "not measured (no samples)".to_string()
            },
        }
    }

    pub fn against(mut self, what: &str, value: f64, unit: &str) -> Figure {
        let value = if value.is_finite() { value } else { 0.0 };
        self.ratio = (value != 0.0).then(|| self.value / value);
        self.baseline = Some(Baseline {
            what: what.to_string(),
            value,
            unit: unit.to_string(),
        });
        self
    }

    pub fn target(mut self, t: &str) -> Figure {
        self.target = Some(t.to_string());
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Figure {
        let n = n.into();
        if self.note.is_empty() {
            self.note = n;
        } else {
            self.note = format!("{}; {n}", self.note);
        }
        self
    }
}

/// Numbers for the table: 3 significant digits, no exponent for usual magnitudes.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        format!("{v:.3e}")
    }
}

impl Report {
    /// The final table (Markdown, so docs/benchmarks.md can take it as printed).
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("| # | figure | value | baseline (same run) | ratio | target |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for f in &self.figures {
            let base = f
                .baseline
                .as_ref()
                .map(|b| format!("{}: {} {}", b.what, num(b.value), b.unit))
                .unwrap_or_default();
            let ratio = f.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} |\n",
                f.item,
                f.what,
                num(f.value),
                f.unit,
                base,
                ratio,
                f.target.clone().unwrap_or_default()
            ));
        }
        s
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field_and_ratio_is_value_over_baseline() {
        let f = Figure::new("k", 1, "w", 5.0, "MB/s")
            .against("b", 10.0, "MB/s")
            .target(">= 0.5")
            .note("n");
        assert_eq!(f.ratio, Some(0.5));
        let r = Report {
            suite: "chimney-bench".into(),
            version: 1,
            quick: true,
            command: "c".into(),
            machine: "m".into(),
            started_unix: 1,
            wall_seconds: 2.0,
            figures: vec![f, Figure::new("z", 3, "no baseline", 0.0, "us")],
        };
        let back = Report::from_json(&r.to_json()).expect("parses");
        assert_eq!(back, r);
        let t = r.table();
        assert!(
            t.contains("| 1 | w | 5.00 MB/s | b: 10.0 MB/s | 0.500 | >= 0.5 |"),
            "{t}"
        );
    }

    #[test]
    fn nan_value_becomes_zero_with_a_note_and_the_json_still_parses() {
        let f = Figure::new("k", 3, "w", f64::NAN, "us").against("b", f64::NAN, "us");
        assert_eq!((f.value, f.ratio), (0.0, None));
        assert_eq!(f.note, "not measured (no samples)");
        let text = serde_json::to_string(&f).expect("json");
        let back: Figure = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, f);
    }

    #[test]
    fn zero_baseline_gives_no_ratio() {
        assert_eq!(
            Figure::new("k", 1, "w", 5.0, "x")
                .against("b", 0.0, "x")
                .ratio,
            None
        );
    }
}
