//! Progress display: one spinner line (indicatif; hidden when stderr is not a terminal) and
//! one plain line per finished step on stderr, so logs of non-interactive runs show progress
//! too.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    start: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            start: Instant::now(),
        }
    }

    /// What is running now.
    pub fn set(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// A finished step (printed above the spinner, or as a plain line without a terminal).
    pub fn done(&self, msg: impl AsRef<str>) {
        let line = format!(
            "[{:6.1} s] {}",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
