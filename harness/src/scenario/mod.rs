//! The scenario runner: the main job of the harness (issue 6).
//!
//! - [`format`]: the TOML scenario format, strict loading with file/line/key errors;
//! - [`runner`]: one scenario on a fresh namespace + device + VMM, with a model of what
//!   was offloaded;
//! - [`conformance`]: rules of the checklist checked on every completion and event;
//! - [`checklist`]: the embedded checklist (C-001…C-234) for `coverage`;
//! - [`report`]: summary table, JUnit, TAP 13, JSON, coverage;
//! - [`host`]: the host stack (netstack engine on queue pair 0) and the Linux peer;
//! - [`link`]: NDIS model (default) or raw control ring, behind one interface;
//! - [`plot`]: time-sequence SVG per TCP connection of a scenario's pcap;
//! - [`cleanup`]: namespaces and device processes to remove on Ctrl-C.

pub mod checklist;
pub mod cleanup;
pub mod conformance;
pub mod format;
pub mod host;
pub mod link;
pub mod plot;
pub mod report;
pub mod runner;

pub use format::{load, parse, Scenario, ScenarioError, Step};
pub use runner::{run_scenario, Outcome, RunOptions, ScenarioReport, StepOutcome};
