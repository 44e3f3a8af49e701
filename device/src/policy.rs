//! Vendor policy: the decisions a real offload target's firmware makes, so a vendor can
//! prototype them on this device (docs/vendor-guide.md). Two ways in:
//! * a TOML file given with `--policy` ([`PolicyFile`], validated; errors name the key);
//! * the [`VendorPolicy`] trait, implemented in code ([`FilePolicy`] implements it from the
//!   file; [`SmallTablePolicy`] is the worked example).
//!
//! Some knobs are deliberate firmware bugs that break a named C-item, so a test suite can
//! prove that it catches them: `send_complete_before_ack` (C-142), `event_after_terminate`
//! (C-114), `wrong_terminate_status` (C-112).

use chimney_abi::event::{tcp_event, upload_reason};
use chimney_abi::{DeviceHandle, Layer, NdisStatus};
use chimney_netstack::EngineConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::time::Duration;

/// The decisions the device delegates to the vendor. Every method has the behaviour of a
/// correct target as its default.
pub trait VendorPolicy: Send {
    /// A new object of `layer` in an initiate tree: `Some(status)` refuses it with that
    /// status (e.g. OFFLOAD_TCP_ENTRIES), `None` accepts it.
    fn initiate(&mut self, _layer: Layer) -> Option<NdisStatus> {
        None
    }
    /// A send request of `len` bytes: `Some(status)` completes it at once with that status.
    fn send(&mut self, _handle: DeviceHandle, _len: usize) -> Option<NdisStatus> {
        None
    }
    /// A TCP connection was offloaded (in offload order; lets a policy act "by connection").
    fn offloaded(&mut self, _handle: DeviceHandle) {}
    /// How long the completion of a send request of `handle` is held before it goes to the
    /// ring (completion delays; with a random part, completions of different connections
    /// reorder, those of one connection never: C-140). Zero = at once.
    fn send_completion_delay(&mut self, _handle: DeviceHandle) -> Duration {
        Duration::ZERO
    }
    /// Deliberate bug (breaks C-142): complete sends when queued, not when acknowledged.
    fn send_complete_before_ack(&self) -> bool {
        false
    }
    /// A spontaneous event for a connection that has moved `bytes` (sent and acknowledged
    /// plus received): `(TCP_OFFLOAD_EVENT_TYPE, info)`. Asked after every batch of work;
    /// return each event once.
    fn spontaneous_event(&mut self, _handle: DeviceHandle, _bytes: u64) -> Option<(u32, u32)> {
        None
    }
    /// Deliberate bug (breaks C-114): raise a retrieve event for a connection after its
    /// terminate completed.
    fn event_after_terminate(&self) -> bool {
        false
    }
    /// Deliberate bug (breaks C-112): the status of a TCP block of a successful terminate.
    fn terminate_status(&mut self) -> Option<NdisStatus> {
        None
    }
    /// Engine tuning of offloaded connections (delayed ACK, SACK, RTO floor, …).
    fn tune(&self, _cfg: &mut EngineConfig) {}
    /// TcpIndicateSendBacklogChange (§4.1, C-155): `Some(throttle)` = raise it when the
    /// preferred backlog changes materially, at most once per `throttle` per connection;
    /// `None` (the default) = do not raise it (the host then keeps what it likes posted).
    fn send_backlog_throttle(&self) -> Option<Duration> {
        None
    }
    /// An adapter-wide status indication to raise now (§4.3): `OFFLOAD_PAUSE`,
    /// `UPLOAD_ALL` or `OFFLOAD_RESUME`, given what the adapter has done so far. Asked after
    /// every request and batch of data-path work; return each indication once.
    fn adapter_status(&mut self, _activity: &AdapterActivity) -> Option<NdisStatus> {
        None
    }
}

/// What [`VendorPolicy::adapter_status`] decides on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterActivity {
    /// TCP connections offloaded since the device started (successful initiates).
    pub tcp_offloads: u64,
    /// Objects offloaded now (neighbors + paths + TCP).
    pub objects_live: u64,
    /// Bytes moved by all offloaded connections so far.
    pub bytes_moved: u64,
    /// An OFFLOAD_PAUSE or UPLOAD_ALL was indicated and no OFFLOAD_RESUME since.
    pub paused: bool,
    /// UPLOAD_ALL was indicated and no OFFLOAD_RESUME since.
    pub upload_all: bool,
}

/// The correct target: every default.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultPolicy;
impl VendorPolicy for DefaultPolicy {}

/// Why a policy file was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Toml(String),
    #[error("{key}: {why}")]
    Value { key: String, why: String },
}

/// `[capacity]`: objects of each type the device accepts (OFFLOAD_*_ENTRIES beyond).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub neighbors: Option<u32>,
    pub paths: Option<u32>,
    pub tcp: Option<u32>,
}

/// `[[fail]]`: fail requests of `operation` with `status`: the `nth` one (1-based), every
/// `every`-th one, the `first` n of them, each with probability `rate` (seeded), or all of
/// them when none is given; `connection = n` restricts the rule to the n-th offloaded
/// connection (1-based, sends only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRule {
    /// `initiate_tcp` or `send`.
    pub operation: String,
    /// An NDIS status name without the `NDIS_STATUS_` prefix, e.g. `OFFLOAD_TCP_ENTRIES`.
    pub status: String,
    pub nth: Option<u64>,
    pub every: Option<u64>,
    pub first: Option<u64>,
    pub rate: Option<f64>,
    pub connection: Option<u64>,
}

/// `[completion]`: send completions held `send_delay_ms` plus a seeded random part up to
/// `jitter_ms` (reorders completions across connections, never within one: C-140).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRules {
    pub send_delay_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
}

/// `[engine]`: tuning of offloaded connections.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTuning {
    pub delayed_ack_ms: Option<u64>,
    pub ack_frequency: Option<u32>,
    pub min_rto_ms: Option<u64>,
    pub sack: Option<bool>,
}

/// `[[event]]`: raise `kind` (`retrieve` with `reason`, or `send_backlog`) for every
/// connection once it has moved `after_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    pub kind: String,
    pub reason: Option<String>,
    pub after_bytes: u64,
}

/// `[adapter]`: adapter-wide status indications (§4.3) raised by the device.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterRules {
    /// OFFLOAD_PAUSE once this many TCP connections were offloaded.
    pub pause_after_offloads: Option<u64>,
    /// UPLOAD_ALL once this many TCP connections were offloaded.
    pub upload_all_after_offloads: Option<u64>,
    /// UPLOAD_ALL once the offloaded connections together moved this many bytes.
    pub upload_all_after_bytes: Option<u64>,
    /// OFFLOAD_RESUME when, after a pause or upload-all, no object is offloaded any more
    /// (C-015's cycle: pause, connections uploaded, resume). Default true.
    pub resume_when_empty: Option<bool>,
}

/// `[backlog]`: TcpIndicateSendBacklogChange (§4.1).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogRules {
    /// Raise backlog events, at most one per connection per `throttle_ms` (absent: no
    /// backlog events).
    pub throttle_ms: Option<u64>,
}

/// `[bugs]`: deliberate firmware bugs (all off by default).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bugs {
    #[serde(default)]
    pub send_complete_before_ack: bool,
    #[serde(default)]
    pub event_after_terminate: bool,
    /// Status name to report for TCP blocks of a terminate instead of SUCCESS.
    pub wrong_terminate_status: Option<String>,
}

/// The policy file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub fail: Vec<FailRule>,
    #[serde(default)]
    pub engine: EngineTuning,
    #[serde(default)]
    pub event: Vec<EventRule>,
    #[serde(default)]
    pub bugs: Bugs,
    #[serde(default)]
    pub adapter: AdapterRules,
    #[serde(default)]
    pub backlog: BacklogRules,
    #[serde(default)]
    pub completion: CompletionRules,
    /// Seed of every random choice of the policy (`rate`, `jitter_ms`); printed at start.
    pub seed: Option<u64>,
}

fn status_by_name(key: String, name: &str) -> Result<NdisStatus, PolicyError> {
    const TABLE: &[NdisStatus] = &[
        NdisStatus::SUCCESS,
        NdisStatus::FAILURE,
        NdisStatus::RESOURCES,
        NdisStatus::NOT_SUPPORTED,
        NdisStatus::INVALID_STATE,
        NdisStatus::REQUEST_ABORTED,
        NdisStatus::UPLOAD_IN_PROGRESS,
        NdisStatus::OFFLOAD_TCP_ENTRIES,
        NdisStatus::OFFLOAD_PATH_ENTRIES,
        NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES,
        NdisStatus::OFFLOAD_TCP_XMIT_BUFFER,
        NdisStatus::OFFLOAD_TCP_RCV_BUFFER,
        NdisStatus::OFFLOAD_TCP_RCV_WINDOW,
        NdisStatus::OFFLOAD_POLICY,
        NdisStatus::OFFLOAD_CONNECTION_REJECTED,
        NdisStatus::OFFLOAD_PATH_MTU,
    ];
    TABLE
        .iter()
        .copied()
        .find(|s| s.name().and_then(|n| n.strip_prefix("NDIS_STATUS_")) == Some(name))
        .ok_or_else(|| PolicyError::Value {
            key,
            why: format!("{name:?} is not a status this device can report"),
        })
}

fn reason_by_name(key: String, name: &str) -> Result<u32, PolicyError> {
    use upload_reason::*;
    Ok(match name {
        "LowActivity" => LOW_ACTIVITY,
        "HighDropRate" => HIGH_DROP_RATE,
        "SmallIO" => SMALL_IO,
        "NoBufferProposting" => NO_BUFFER_PREPOSTING,
        "ReceivedUrgentData" => RECEIVED_URGENT_DATA,
        "HighFragmentation" => HIGH_FRAGMENTATION,
        "HighOutofOrderPackets" => HIGH_OUT_OF_ORDER_PACKETS,
        "TimeoutExpiration" => TIMEOUT_EXPIRATION,
        "InvalidState" => INVALID_STATE,
        "UploadRequested" => UPLOAD_REQUESTED,
        "HardwareFailure" => HARDWARE_FAILURE,
        _ => {
            return Err(PolicyError::Value {
                key,
                why: format!("{name:?} is not a TCP_UPLOAD_REASON (LowActivity … HardwareFailure)"),
            })
        }
    })
}

/// A validated policy file, ready to act.
#[derive(Debug, Clone, Default)]
pub struct FilePolicy {
    pub file: PolicyFile,
    fails: Vec<ActiveFail>,
    events: Vec<(u32, u32, u64)>,
    fired: HashSet<(DeviceHandle, usize)>,
    terminate_status: Option<NdisStatus>,
    pause_done: bool,
    upload_all_done: bool,
    /// Offload order of TCP connections (1-based), for `connection = n` rules.
    ordinal: std::collections::HashMap<DeviceHandle, u64>,
    rng: u64,
}

/// A `[[fail]]` rule with its request counter.
#[derive(Debug, Clone, Copy)]
struct ActiveFail {
    op: Op,
    status: NdisStatus,
    nth: Option<u64>,
    every: Option<u64>,
    first: Option<u64>,
    rate: Option<f64>,
    connection: Option<u64>,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    InitiateTcp,
    Send,
}

impl FilePolicy {
    pub fn load(path: &std::path::Path) -> Result<FilePolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parse and validate; unknown keys, wrong types and impossible values are refused.
    pub fn parse(text: &str) -> Result<FilePolicy, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        let mut p = FilePolicy {
            file: file.clone(),
            ..FilePolicy::default()
        };
        let cap = &file.capacity;
        for (k, v) in [
            ("capacity.neighbors", cap.neighbors),
            ("capacity.paths", cap.paths),
            ("capacity.tcp", cap.tcp),
        ] {
            if v == Some(0) {
                return Err(PolicyError::Value {
                    key: k.into(),
                    why: "0 objects would refuse every offload; give at least 1".into(),
                });
            }
        }
        for (i, f) in file.fail.iter().enumerate() {
            let op = match f.operation.as_str() {
                "initiate_tcp" => Op::InitiateTcp,
                "send" => Op::Send,
                o => {
                    return Err(PolicyError::Value {
                        key: format!("fail[{i}].operation"),
                        why: format!("{o:?} is not one of initiate_tcp, send"),
                    })
                }
            };
            let st = status_by_name(format!("fail[{i}].status"), &f.status)?;
            if !st.is_error() {
                return Err(PolicyError::Value {
                    key: format!("fail[{i}].status"),
                    why: format!("{} is not a failure status", f.status),
                });
            }
            for (k, v) in [
                ("every", f.every),
                ("nth", f.nth),
                ("first", f.first),
                ("connection", f.connection),
            ] {
                if v == Some(0) {
                    return Err(PolicyError::Value {
                        key: format!("fail[{i}].{k}"),
                        why: "counts start at 1".into(),
                    });
                }
            }
            if let Some(r) = f.rate {
                if !(r > 0.0 && r <= 1.0) {
                    return Err(PolicyError::Value {
                        key: format!("fail[{i}].rate"),
                        why: format!("{r} is not a probability in (0, 1]"),
                    });
                }
            }
            let given = [
                f.nth.is_some(),
                f.every.is_some(),
                f.first.is_some(),
                f.rate.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1 {
                return Err(PolicyError::Value {
                    key: format!("fail[{i}]"),
                    why: "give at most one of nth, every, first, rate".into(),
                });
            }
            if f.connection.is_some() && op != Op::Send {
                return Err(PolicyError::Value {
                    key: format!("fail[{i}].connection"),
                    why: "only send rules can name a connection".into(),
                });
            }
            p.fails.push(ActiveFail {
                op,
                status: st,
                nth: f.nth,
                every: f.every,
                first: f.first,
                rate: f.rate,
                connection: f.connection,
                count: 0,
            });
        }
        if let Some(ms) = file.engine.delayed_ack_ms {
            if ms > 500 {
                return Err(PolicyError::Value {
                    key: "engine.delayed_ack_ms".into(),
                    why: format!("{ms} ms exceeds the 500 ms RFC 1122 allows"),
                });
            }
        }
        if file.engine.ack_frequency == Some(0) {
            return Err(PolicyError::Value {
                key: "engine.ack_frequency".into(),
                why: "0: at least every segment must be able to trigger an ACK".into(),
            });
        }
        for (i, e) in file.event.iter().enumerate() {
            let key = |f: &str| format!("event[{i}].{f}");
            let (code, info) = match e.kind.as_str() {
                "retrieve" => {
                    let r = e.reason.as_deref().ok_or_else(|| PolicyError::Value {
                        key: key("reason"),
                        why: "a retrieve needs a reason".into(),
                    })?;
                    (tcp_event::RETRIEVE, reason_by_name(key("reason"), r)?)
                }
                "send_backlog" => (tcp_event::SEND_BACKLOG_CHANGE, 64 << 10),
                k => {
                    return Err(PolicyError::Value {
                        key: key("kind"),
                        why: format!("{k:?} is not one of retrieve, send_backlog"),
                    })
                }
            };
            p.events.push((code, info, e.after_bytes));
        }
        let a = &file.adapter;
        for (k, v) in [
            ("adapter.pause_after_offloads", a.pause_after_offloads),
            (
                "adapter.upload_all_after_offloads",
                a.upload_all_after_offloads,
            ),
            ("adapter.upload_all_after_bytes", a.upload_all_after_bytes),
        ] {
            if v == Some(0) {
                return Err(PolicyError::Value {
                    key: k.into(),
                    why: "0: the indication would precede every offload; give at least 1".into(),
                });
            }
        }
        if let Some(ms) = file.backlog.throttle_ms {
            if ms > 3_600_000 {
                return Err(PolicyError::Value {
                    key: "backlog.throttle_ms".into(),
                    why: format!("{ms} ms is more than an hour"),
                });
            }
        }
        let c = &file.completion;
        for (k, v) in [
            ("completion.send_delay_ms", c.send_delay_ms),
            ("completion.jitter_ms", c.jitter_ms),
        ] {
            if v.is_some_and(|ms| ms > 10_000) {
                return Err(PolicyError::Value {
                    key: k.into(),
                    why: "more than 10 s would stall every sender".into(),
                });
            }
        }
        p.rng = file.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        if p.fails.iter().any(|f| f.rate.is_some()) || c.jitter_ms.is_some() {
            tracing::info!(
                seed = p.rng,
                "policy: random choices seeded (put `seed = {}` in the file to repeat)",
                p.rng
            );
        }
        if let Some(s) = &file.bugs.wrong_terminate_status {
            p.terminate_status = Some(status_by_name("bugs.wrong_terminate_status".into(), s)?);
        }
        Ok(p)
    }

    /// Object limits with the file's capacities applied.
    pub fn limits(
        &self,
        base: crate::state_manipulation::ObjectLimits,
    ) -> crate::state_manipulation::ObjectLimits {
        let c = &self.file.capacity;
        crate::state_manipulation::ObjectLimits {
            neighbors: c.neighbors.unwrap_or(base.neighbors),
            paths: c.paths.unwrap_or(base.paths),
            tcp: c.tcp.unwrap_or(base.tcp),
        }
    }

    /// Seeded uniform value in [0, 1) (splitmix64).
    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.rng;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fail(&mut self, op: Op, handle: Option<DeviceHandle>) -> Option<NdisStatus> {
        let mut out = None;
        let conn = handle.and_then(|h| self.ordinal.get(&h).copied());
        for i in 0..self.fails.len() {
            let f = self.fails[i];
            if f.op != op || f.connection.is_some_and(|n| conn != Some(n)) {
                continue;
            }
            let count = f.count + 1;
            self.fails[i].count = count;
            let hit = if let Some(n) = f.nth {
                count == n
            } else if let Some(e) = f.every {
                count % e == 0
            } else if let Some(n) = f.first {
                count <= n
            } else if let Some(r) = f.rate {
                self.random() < r
            } else {
                true
            };
            if hit && out.is_none() {
                out = Some(f.status);
            }
        }
        out
    }
}

impl VendorPolicy for FilePolicy {
    fn initiate(&mut self, layer: Layer) -> Option<NdisStatus> {
        (layer == Layer::Tcp)
            .then(|| self.fail(Op::InitiateTcp, None))
            .flatten()
    }
    fn send(&mut self, h: DeviceHandle, _len: usize) -> Option<NdisStatus> {
        self.fail(Op::Send, Some(h))
    }
    fn offloaded(&mut self, h: DeviceHandle) {
        let n = self.ordinal.len() as u64 + 1;
        self.ordinal.entry(h).or_insert(n);
    }
    fn send_completion_delay(&mut self, _h: DeviceHandle) -> Duration {
        let c = &self.file.completion;
        let (d, j) = (c.send_delay_ms.unwrap_or(0), c.jitter_ms.unwrap_or(0));
        let jitter = if j > 0 {
            (self.random() * (j + 1) as f64) as u64
        } else {
            0
        };
        Duration::from_millis(d + jitter)
    }
    fn send_complete_before_ack(&self) -> bool {
        self.file.bugs.send_complete_before_ack
    }
    fn spontaneous_event(&mut self, h: DeviceHandle, bytes: u64) -> Option<(u32, u32)> {
        for (i, (code, info, after)) in self.events.iter().enumerate() {
            if bytes >= *after && self.fired.insert((h, i)) {
                return Some((*code, *info));
            }
        }
        None
    }
    fn event_after_terminate(&self) -> bool {
        self.file.bugs.event_after_terminate
    }
    fn terminate_status(&mut self) -> Option<NdisStatus> {
        self.terminate_status
    }
    fn send_backlog_throttle(&self) -> Option<Duration> {
        self.file.backlog.throttle_ms.map(Duration::from_millis)
    }
    fn adapter_status(&mut self, a: &AdapterActivity) -> Option<NdisStatus> {
        let r = &self.file.adapter;
        if !self.pause_done && r.pause_after_offloads.is_some_and(|n| a.tcp_offloads >= n) {
            self.pause_done = true;
            return Some(NdisStatus::OFFLOAD_PAUSE);
        }
        if !self.upload_all_done
            && (r
                .upload_all_after_offloads
                .is_some_and(|n| a.tcp_offloads >= n)
                || r.upload_all_after_bytes.is_some_and(|n| a.bytes_moved >= n))
        {
            self.upload_all_done = true;
            return Some(NdisStatus::UPLOAD_ALL);
        }
        if a.paused && a.objects_live == 0 && r.resume_when_empty.unwrap_or(true) {
            return Some(NdisStatus::OFFLOAD_RESUME);
        }
        None
    }
    fn tune(&self, cfg: &mut EngineConfig) {
        let e = &self.file.engine;
        if let Some(ms) = e.delayed_ack_ms {
            cfg.tcp.delayed_ack = Duration::from_millis(ms);
        }
        if let Some(n) = e.ack_frequency {
            cfg.tcp.ack_frequency = n;
        }
        if let Some(ms) = e.min_rto_ms {
            cfg.tcp.min_rto = Duration::from_millis(ms);
        }
        if let Some(s) = e.sack {
            cfg.tcp.sack = s;
        }
    }
}

/// Worked example of the trait: a firmware with a small connection table that refuses the
/// fifth and later concurrent offloads with OFFLOAD_TCP_ENTRIES... and, to free its table,
/// asks the host to take back every connection that has moved 1 MiB (retrieve, reason
/// LowActivity — what a table-managing firmware would use).
#[derive(Debug, Default)]
pub struct SmallTablePolicy {
    offloaded: u32,
    asked: HashSet<DeviceHandle>,
}

impl SmallTablePolicy {
    pub const TABLE: u32 = 4;
}

impl VendorPolicy for SmallTablePolicy {
    fn initiate(&mut self, layer: Layer) -> Option<NdisStatus> {
        if layer != Layer::Tcp {
            return None;
        }
        if self.offloaded >= Self::TABLE {
            return Some(NdisStatus::OFFLOAD_TCP_ENTRIES);
        }
        self.offloaded += 1;
        None
    }
    fn spontaneous_event(&mut self, h: DeviceHandle, bytes: u64) -> Option<(u32, u32)> {
        (bytes >= 1 << 20 && self.asked.insert(h))
            .then_some((tcp_event::RETRIEVE, upload_reason::LOW_ACTIVITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        FilePolicy::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_wrong_types_and_impossible_values_name_the_key() {
        assert!(
            err("[capacity]\ntcpp = 3\n").contains("tcpp"),
            "{}",
            err("[capacity]\ntcpp = 3\n")
        );
        assert!(err("[capacity]\ntcp = \"many\"\n").contains("tcp"));
        assert!(err("[capacity]\ntcp = 0\n").starts_with("capacity.tcp:"));
        let bad_status = "[[fail]]\noperation = \"send\"\nstatus = \"SOMETIMES\"\n";
        assert!(
            err(bad_status).starts_with("fail[0].status:"),
            "{}",
            err(bad_status)
        );
        let bad_op = "[[fail]]\noperation = \"dance\"\nstatus = \"FAILURE\"\n";
        assert!(err(bad_op).starts_with("fail[0].operation:"));
        assert!(err("[engine]\ndelayed_ack_ms = 900\n").starts_with("engine.delayed_ack_ms:"));
        let bad_reason = "[[event]]\nkind = \"retrieve\"\nreason = \"Bored\"\nafter_bytes = 1\n";
        assert!(err(bad_reason).starts_with("event[0].reason:"));
        assert!(err("[bugs]\nwrong_terminate_status = \"NOPE\"\n")
            .starts_with("bugs.wrong_terminate_status:"));
    }

    #[test]
    fn fail_rules_count_and_events_fire_once() {
        let mut p = FilePolicy::parse(
            "[[fail]]\noperation = \"initiate_tcp\"\nstatus = \"OFFLOAD_TCP_ENTRIES\"\nevery = 2\n\
             [[event]]\nkind = \"retrieve\"\nreason = \"LowActivity\"\nafter_bytes = 100\n",
        )
        .unwrap();
        let seen: Vec<_> = (0..4).map(|_| p.initiate(Layer::Tcp)).collect();
        assert_eq!(
            seen,
            vec![
                None,
                Some(NdisStatus::OFFLOAD_TCP_ENTRIES),
                None,
                Some(NdisStatus::OFFLOAD_TCP_ENTRIES)
            ]
        );
        assert_eq!(p.initiate(Layer::Path), None);
        let h = DeviceHandle(9);
        assert_eq!(p.spontaneous_event(h, 99), None);
        assert_eq!(
            p.spontaneous_event(h, 100),
            Some((tcp_event::RETRIEVE, upload_reason::LOW_ACTIVITY))
        );
        assert_eq!(p.spontaneous_event(h, 200), None);
    }

    #[test]
    fn fail_rules_by_first_rate_and_connection_validate_and_act() {
        assert!(
            err("[[fail]]\noperation = \"send\"\nstatus = \"FAILURE\"\nrate = 1.5\n")
                .starts_with("fail[0].rate:")
        );
        assert!(
            err("[[fail]]\noperation = \"send\"\nstatus = \"FAILURE\"\nfirst = 0\n")
                .starts_with("fail[0].first:")
        );
        assert!(err(
            "[[fail]]\noperation = \"initiate_tcp\"\nstatus = \"FAILURE\"\nconnection = 2\n"
        )
        .starts_with("fail[0].connection:"));
        assert!(
            err("[[fail]]\noperation = \"send\"\nstatus = \"FAILURE\"\nnth = 1\nrate = 0.5\n")
                .starts_with("fail[0]:")
        );
        assert!(
            err("[completion]\nsend_delay_ms = 20000\n").starts_with("completion.send_delay_ms:")
        );
        assert!(err("[completion]\ndelay = 1\n").contains("delay"));
        // first = 2 on connection 2 only.
        let mut p = FilePolicy::parse(
            "[[fail]]\noperation = \"send\"\nstatus = \"REQUEST_ABORTED\"\nfirst = 2\nconnection = 2\n",
        )
        .unwrap();
        let (a, b) = (DeviceHandle(11), DeviceHandle(22));
        p.offloaded(a);
        p.offloaded(b);
        let seen: Vec<_> = [a, b, a, b, b].iter().map(|h| p.send(*h, 1)).collect();
        let ab = Some(NdisStatus::REQUEST_ABORTED);
        assert_eq!(seen, vec![None, ab, None, ab, None]);
        // rate: seeded, so the same seed gives the same choices; about the rate.
        let text = "seed = 7\n[[fail]]\noperation = \"send\"\nstatus = \"FAILURE\"\nrate = 0.25\n";
        let run = || {
            let mut p = FilePolicy::parse(text).unwrap();
            (0..4000)
                .map(|_| p.send(a, 1).is_some())
                .collect::<Vec<_>>()
        };
        let (x, y) = (run(), run());
        assert_eq!(x, y, "same seed, same failures");
        let n = x.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&n), "rate 0.25 of 4000: {n}");
    }

    #[test]
    fn completion_delay_is_seeded_and_bounded() {
        let text = "seed = 3\n[completion]\nsend_delay_ms = 5\njitter_ms = 20\n";
        let mut p = FilePolicy::parse(text).unwrap();
        let d: Vec<u64> = (0..200)
            .map(|_| p.send_completion_delay(DeviceHandle(1)).as_millis() as u64)
            .collect();
        assert!(d.iter().all(|v| (5..=25).contains(v)), "{d:?}");
        assert!(d.iter().any(|v| *v != d[0]), "jitter varies");
        let mut q = FilePolicy::parse(text).unwrap();
        let e: Vec<u64> = (0..200)
            .map(|_| q.send_completion_delay(DeviceHandle(1)).as_millis() as u64)
            .collect();
        assert_eq!(d, e, "same seed, same delays");
    }

    #[test]
    fn small_table_example_refuses_the_fifth_connection() {
        let mut p = SmallTablePolicy::default();
        let r: Vec<_> = (0..5).map(|_| p.initiate(Layer::Tcp)).collect();
        assert_eq!(r[3], None);
        assert_eq!(r[4], Some(NdisStatus::OFFLOAD_TCP_ENTRIES));
    }
}
