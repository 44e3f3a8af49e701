//! The scenario file format (TOML, docs/scenarios.md): a scenario is some metadata, the
//! checklist items it verifies, optional device settings, and a list of steps. Each step is
//! one table under `[[step]]` whose single key names the step:
//!
//! ```toml
//! name = "bulk-1024"
//! verifies = ["C-035", "C-041"]
//! [[step]]
//! offload_set = { connections = 1024, family = "both" }
//! ```
//!
//! Loading is strict: unknown keys and unknown steps are refused, numbers are range-checked,
//! status and reason names must be real; every error names the file, the line and the key
//! path (`step[2].offload_set.connections`).

use std::fmt;
use std::path::{Path, PathBuf};

use chimney_abi::{NdisStatus, Reason};
use serde::{Deserialize, Deserializer};

use crate::objects::MAX_TCP_OBJECTS;

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique name (default: the file stem).
    #[serde(default)]
    pub name: String,
    /// One sentence: what the scenario shows.
    pub summary: String,
    /// Checklist items (C-NNN) this scenario verifies when it passes.
    pub verifies: Vec<ItemId>,
    /// How the runner reaches the offload target: `ndis` (default) drives the miniport
    /// through its registered handler tables; `ring` talks to the control ring directly,
    /// for the device's own input validation (`bad_request`, `expect_error`).
    #[serde(default)]
    pub driver: DriverKind,
    #[serde(default)]
    pub device: DeviceSettings,
    /// What the host sets with OID_TCP_CONNECTION_OFFLOAD_PARAMETERS (C-011) before the
    /// first step; unnamed fields keep their defaults.
    #[serde(default)]
    pub parameters: ParameterSettings,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
    /// Where it was loaded from (not in the file).
    #[serde(skip)]
    pub file: PathBuf,
    /// Line of each `[[step]]` header, for messages (not in the file).
    #[serde(skip)]
    pub step_lines: Vec<usize>,
}

/// `[parameters]`: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS fields a scenario may set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSettings {
    /// NceStaleTicks: how long a neighbor may go without confirmation before the offload
    /// target asks the host (NeighborReachabilityQuery, C-224).
    pub nce_stale_ticks: Option<u32>,
    /// TcpMaximumRetransmissions (C-012; 1..=255).
    pub tcp_maximum_retransmissions: Option<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    #[default]
    Ndis,
    Ring,
}

/// `[device]`: how the device is started for this scenario.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    pub max_neighbors: Option<u32>,
    pub max_paths: Option<u32>,
    pub max_tcp: Option<u32>,
    pub queue_pairs: Option<u16>,
    /// A vendor policy file (issue 4's `--policy`), relative to the scenario file.
    pub policy: Option<PathBuf>,
}

impl DeviceSettings {
    pub fn is_default(&self) -> bool {
        *self == DeviceSettings::default()
    }
}

/// A checklist item id, `C-001` … `C-234`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub u16);

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "C-{:03}", self.0)
    }
}

impl ItemId {
    pub fn parse(s: &str) -> Option<ItemId> {
        let n: u16 = s.strip_prefix("C-")?.parse().ok()?;
        (1..=234).contains(&n).then_some(ItemId(n))
    }
}

impl<'de> Deserialize<'de> for ItemId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ItemId::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a checklist item (C-001 … C-234, three digits)"
            ))
        })
    }
}

/// An NDIS status written by name: `SUCCESS`, `NDIS_STATUS_OFFLOAD_TCP_ENTRIES`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusName(pub NdisStatus);

const KNOWN_STATUSES: &[NdisStatus] = &[
    NdisStatus::SUCCESS,
    NdisStatus::PENDING,
    NdisStatus::NOT_ACCEPTED,
    NdisStatus::FAILURE,
    NdisStatus::RESOURCES,
    NdisStatus::NOT_SUPPORTED,
    NdisStatus::INVALID_STATE,
    NdisStatus::REQUEST_ABORTED,
    NdisStatus::PAUSED,
    NdisStatus::OFFLOAD_PAUSE,
    NdisStatus::UPLOAD_ALL,
    NdisStatus::OFFLOAD_RESUME,
    NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
    NdisStatus::OFFLOAD_STATE_INVALID,
    NdisStatus::UPLOAD_IN_PROGRESS,
    NdisStatus::REQUEST_UPLOAD,
    NdisStatus::UPLOAD_REQUESTED,
    NdisStatus::OFFLOAD_TCP_ENTRIES,
    NdisStatus::OFFLOAD_PATH_ENTRIES,
    NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES,
    NdisStatus::OFFLOAD_IP_ADDRESS_ENTRIES,
    NdisStatus::OFFLOAD_HW_ADDRESS_ENTRIES,
    NdisStatus::OFFLOAD_VLAN_ENTRIES,
    NdisStatus::OFFLOAD_TCP_XMIT_BUFFER,
    NdisStatus::OFFLOAD_TCP_RCV_BUFFER,
    NdisStatus::OFFLOAD_TCP_RCV_WINDOW,
    NdisStatus::OFFLOAD_VLAN_MISMATCH,
    NdisStatus::OFFLOAD_DATA_NOT_ACCEPTED,
    NdisStatus::OFFLOAD_POLICY,
    NdisStatus::OFFLOAD_DATA_PARTIALLY_ACCEPTED,
    NdisStatus::OFFLOAD_REQUEST_RESET,
    NdisStatus::OFFLOAD_CONNECTION_REJECTED,
    NdisStatus::OFFLOAD_PATH_MTU,
];

impl StatusName {
    pub fn parse(s: &str) -> Option<StatusName> {
        let up = s.trim().to_ascii_uppercase();
        let short = up.strip_prefix("NDIS_STATUS_").unwrap_or(&up);
        KNOWN_STATUSES
            .iter()
            .find(|st| st.name().and_then(|n| n.strip_prefix("NDIS_STATUS_")) == Some(short))
            .map(|st| StatusName(*st))
    }
}

impl<'de> Deserialize<'de> for StatusName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StatusName::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown NDIS status `{s}` (write e.g. SUCCESS, FAILURE, OFFLOAD_PARTIAL_SUCCESS, \
                 OFFLOAD_TCP_ENTRIES; the NDIS_STATUS_ prefix is optional)"
            ))
        })
    }
}

/// An ERROR-completion reason written by name (`LinkCycle`, `ConstUpdateRefused`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonName(pub Reason);

impl<'de> Deserialize<'de> for ReasonName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reason::ALL
            .iter()
            .find(|r| format!("{r:?}").eq_ignore_ascii_case(&s))
            .map(|r| ReasonName(*r))
            .ok_or_else(|| {
                let all: Vec<String> = Reason::ALL.iter().map(|r| format!("{r:?}")).collect();
                serde::de::Error::custom(format!(
                    "unknown error reason `{s}`, expected one of {}",
                    all.join(", ")
                ))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
    #[default]
    Both,
}

/// Which objects a step acts on: `"all"`, one name, a list of names or globs (`tcp*`), or
/// `"dependents:NAME"` (every live TCP object that depends on NAME).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(pub Vec<String>);

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let v = match Raw::deserialize(d)? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "an empty object list selects nothing",
            ));
        }
        Ok(Selector(v))
    }
}

/// Which class of state a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassName {
    #[default]
    All,
    Const,
    Cached,
    Delegated,
}

/// The kind of a new offload block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Neighbor,
    Path4,
    Path6,
    Tcp,
}

/// TCP states a scenario may give a new TCP object (C-070 says only some may be offloaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpStateName {
    Closed,
    Listen,
    SynSent,
    SynRcvd,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

/// One block of an `offload` tree: exactly one of `new`, `linker`, `placeholder`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    /// A new object of this kind.
    pub new: Option<Kind>,
    /// Its name, for later steps (required with `new`).
    pub name: Option<String>,
    /// A linker: an already offloaded object, by name (C-037).
    pub linker: Option<String>,
    /// A placeholder of this kind (C-036).
    pub placeholder: Option<Kind>,
    /// Index of the first dependent block.
    pub dependent: Option<u32>,
    /// Index of the next block on the same layer.
    pub next: Option<u32>,
    /// Overrides for a new object.
    pub state: Option<TcpStateName>,
    pub local_port: Option<u16>,
    pub initial_rcv_wnd: Option<u32>,
    pub path_mtu: Option<u32>,
    pub vlan_id: Option<u16>,
    /// Neighbor DlSourceAddress, `aa:bb:cc:dd:ee:ff` (C-046/C-047).
    pub dl_source_address: Option<String>,
}

/// Named cached fields an `update` may set (C-083). Each applies to objects of its layer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CachedFields {
    // neighbor
    pub host_reachability_delta: Option<u32>,
    pub dl_destination_address: Option<String>,
    // path
    pub path_mtu: Option<u32>,
    // tcp
    pub ttl: Option<u8>,
    pub tos: Option<u8>,
    pub flow_label: Option<u32>,
    pub user_priority: Option<u8>,
    pub initial_rcv_wnd: Option<u32>,
    pub rcv_indication_size: Option<u32>,
    pub ka_probe_count: Option<u8>,
    pub ka_timeout: Option<u32>,
    pub ka_interval: Option<u32>,
    pub max_rt: Option<u32>,
}

impl CachedFields {
    pub fn touches_neighbor(&self) -> bool {
        self.host_reachability_delta.is_some() || self.dl_destination_address.is_some()
    }
    pub fn touches_path(&self) -> bool {
        self.path_mtu.is_some()
    }
    pub fn touches_tcp(&self) -> bool {
        self.ttl.is_some()
            || self.tos.is_some()
            || self.flow_label.is_some()
            || self.user_priority.is_some()
            || self.initial_rcv_wnd.is_some()
            || self.rcv_indication_size.is_some()
            || self.ka_probe_count.is_some()
            || self.ka_timeout.is_some()
            || self.ka_interval.is_some()
            || self.max_rt.is_some()
    }
}

/// Events a scenario can expect or inject (digest §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Retrieve,
    Disconnect,
    Abort,
    SendBacklogChange,
    NeighborReachabilityQuery,
    UploadAll,
    OffloadPause,
    OffloadResume,
}

/// The 11 `TCP_UPLOAD_REASON`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadReason {
    LowActivity = 1,
    HighDropRate = 2,
    SmallIo = 3,
    NoBufferPreposting = 4,
    ReceivedUrgentData = 5,
    HighFragmentation = 6,
    HighOutOfOrderPackets = 7,
    TimeoutExpiration = 8,
    InvalidState = 9,
    UploadRequested = 10,
    HardwareFailure = 11,
}

/// Malformed requests a scenario can send on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRequestKind {
    /// A tree whose links form a cycle.
    Cycle,
    /// A TCP block whose dependent is a neighbor.
    LayerOrder,
    /// A handle that never named an object.
    UnknownHandle,
    /// The handle of `object` in a block of another layer.
    WrongLayerHandle,
    /// The handle of `object`, which was terminated.
    StaleHandle,
    /// An opcode the ABI does not define.
    UnknownOpcode,
    /// An initiate record cut short.
    Truncated,
    /// An update of `object` whose block Type says const (C-023).
    ConstUpdate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerAction {
    Close,
    Reset,
    StopReading,
    ResumeReading,
    GoSilent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveMode {
    Posted,
    Indicated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectKind {
    Graceful,
    Abortive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenMode {
    Active,
    Passive,
}

/// One step. The TOML key of the step's table is its name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// 1 neighbor → an IPv4 and/or IPv6 path → N TCP objects in one bulk tree, every field
    /// from the scenario seed. Objects are named `neighbor`, `path4`, `path6`, `tcp0`….
    OffloadSet {
        connections: u32,
        #[serde(default)]
        family: Family,
        expect: Option<StatusName>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// A hand-written initiate tree (placeholders, linkers, partial failures).
    Offload {
        blocks: Vec<BlockSpec>,
        /// Overall completion status (the root block's).
        expect: Option<StatusName>,
        /// Status of every block, in block order.
        expect_blocks: Option<Vec<StatusName>>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Query objects; compares every returned variable with what the harness offloaded
    /// and updated unless `compare = false`.
    Query {
        objects: Selector,
        #[serde(default)]
        class: ClassName,
        expect: Option<StatusName>,
        #[serde(default = "yes")]
        compare: bool,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Update named cached variables of the selected objects (each field goes to the
    /// objects of its layer).
    Update {
        objects: Selector,
        set: CachedFields,
        expect: Option<StatusName>,
        /// Expect an ERROR completion with this reason instead.
        expect_error: Option<ReasonName>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Invalidate {
        objects: Selector,
        expect: Option<StatusName>,
        expect_error: Option<ReasonName>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Terminate the selected objects (dependents first in one tree when `objects = "all"`);
    /// compares the returned delegated state with the model unless `compare = false`.
    Terminate {
        objects: Selector,
        #[serde(default = "yes")]
        return_delegated: bool,
        expect: Option<StatusName>,
        expect_error: Option<ReasonName>,
        #[serde(default = "yes")]
        compare: bool,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Wait for events: exactly one per selected object (or `count` adapter-wide ones).
    ExpectEvents {
        kind: EventKind,
        reason: Option<UploadReason>,
        objects: Option<Selector>,
        count: Option<u32>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// No event is pending now.
    ExpectNoEvents {
        /// Quiet period to listen for a stray event, in ms (default 200, at most 10000).
        #[serde(default = "quiet_ms")]
        wait_ms: u32,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Send a malformed request; expect an ERROR completion with `expect_error`.
    BadRequest {
        kind: BadRequestKind,
        object: Option<String>,
        expect_error: ReasonName,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    // ---- host stack, data path, peer, impairment, policy: need the data path ----
    /// Open a connection from the host stack through queue pair 0 to the Linux peer.
    Open {
        name: String,
        #[serde(default = "ipv4")]
        family: Family,
        mode: OpenMode,
        port: u16,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// Offload host-stack connections opened with `open`.
    OffloadConnection {
        conn: String,
        expect: Option<StatusName>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Send {
        conn: String,
        bytes: u64,
        #[serde(default = "seeded")]
        pattern: String,
        /// Offloaded connection: wait for every send completion (default). `false` hands
        /// the NBLs over and goes on: a later `terminate` must return what was not
        /// acknowledged in its NetBufferListChain, byte-exact from SndUna (C-115).
        #[serde(default = "yes")]
        wait: bool,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Receive {
        conn: String,
        bytes: u64,
        mode: ReceiveMode,
        /// SHA-256 of the bytes (hex), or "peer" for what the peer sent.
        sha256: Option<String>,
        /// Indicated mode: bytes the host takes of each indication (OFFLOAD_DATA_PARTIALLY_
        /// ACCEPTED for the rest, which must then come through posted buffers, C-171/C-172);
        /// default: all (SUCCESS).
        accept: Option<u32>,
        /// The peer already wrote these bytes (`peer_write`): only read them.
        #[serde(default)]
        written: bool,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// The HRD the host writes back into NeighborReachabilityQuery indications from now on
    /// (C-226; 0, the default, says its NCE is stale, C-227).
    Reachability {
        hrd: u32,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    /// The peer writes `bytes` more of its seeded stream; nobody reads them yet (a later
    /// `receive` with `written = true` does, e.g. after a terminate returned them).
    PeerWrite {
        conn: String,
        bytes: u64,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Disconnect {
        conn: String,
        kind: DisconnectKind,
        /// SHA-256 (hex) the peer must have read by the close (default: what was sent).
        peer_sha256: Option<String>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Peer {
        conn: String,
        action: PeerAction,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    Impair {
        #[serde(default)]
        loss: f64,
        #[serde(default)]
        reorder: f64,
        #[serde(default)]
        duplicate: f64,
        #[serde(default)]
        delay_ms: u32,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
    InjectEvent {
        kind: EventKind,
        reason: Option<UploadReason>,
        object: Option<String>,
        #[serde(default)]
        verifies: Vec<ItemId>,
    },
}

fn quiet_ms() -> u32 {
    200
}
fn yes() -> bool {
    true
}
fn ipv4() -> Family {
    Family::Ipv4
}
fn seeded() -> String {
    "seeded".to_string()
}

impl Step {
    /// The step's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Step::OffloadSet { .. } => "offload_set",
            Step::Offload { .. } => "offload",
            Step::Query { .. } => "query",
            Step::Update { .. } => "update",
            Step::Invalidate { .. } => "invalidate",
            Step::Terminate { .. } => "terminate",
            Step::ExpectEvents { .. } => "expect_events",
            Step::ExpectNoEvents { .. } => "expect_no_events",
            Step::BadRequest { .. } => "bad_request",
            Step::Open { .. } => "open",
            Step::OffloadConnection { .. } => "offload_connection",
            Step::Send { .. } => "send",
            Step::Receive { .. } => "receive",
            Step::PeerWrite { .. } => "peer_write",
            Step::Reachability { .. } => "reachability",
            Step::Disconnect { .. } => "disconnect",
            Step::Peer { .. } => "peer",
            Step::Impair { .. } => "impair",
            Step::InjectEvent { .. } => "inject_event",
        }
    }

    /// Checklist items the step itself names.
    pub fn verifies(&self) -> &[ItemId] {
        match self {
            Step::OffloadSet { verifies, .. }
            | Step::Offload { verifies, .. }
            | Step::Query { verifies, .. }
            | Step::Update { verifies, .. }
            | Step::Invalidate { verifies, .. }
            | Step::Terminate { verifies, .. }
            | Step::ExpectEvents { verifies, .. }
            | Step::ExpectNoEvents { verifies, .. }
            | Step::BadRequest { verifies, .. }
            | Step::Open { verifies, .. }
            | Step::OffloadConnection { verifies, .. }
            | Step::Send { verifies, .. }
            | Step::Receive { verifies, .. }
            | Step::PeerWrite { verifies, .. }
            | Step::Reachability { verifies, .. }
            | Step::Disconnect { verifies, .. }
            | Step::Peer { verifies, .. }
            | Step::Impair { verifies, .. }
            | Step::InjectEvent { verifies, .. } => verifies,
        }
    }
}

/// A scenario file that could not be loaded: one error, naming file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Lines of the `[[step]]` headers, in order.
fn step_header_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[step]]"))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Load and validate one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parse and validate scenario text (`path` is used for messages and the default name).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let err = |line, key: Option<String>, message: String| ScenarioError {
        file: path.to_path_buf(),
        line,
        key,
        message,
    };
    let de = toml::Deserializer::new(text);
    let mut sc: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of(text, s.start));
        let key = (key != "." && !key.is_empty()).then_some(key);
        err(line, key, inner.message().trim().to_string())
    })?;
    sc.file = path.to_path_buf();
    sc.step_lines = step_header_lines(text);
    if sc.name.is_empty() {
        sc.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    validate(&sc, text).map_err(|(step, key, message)| {
        let line = step
            .and_then(|i| sc.step_lines.get(i).copied())
            .map(|l| key_line(text, l, key.rsplit('.').next().unwrap_or("")));
        err(line, Some(key), message)
    })?;
    Ok(sc)
}

/// The line of `key` at or after `from` (the step header), else `from` itself.
fn key_line(text: &str, from: usize, key: &str) -> usize {
    let key = key.split('[').next().unwrap_or(key);
    text.lines()
        .enumerate()
        .skip(from - 1)
        .take(40)
        .find(|(_, l)| !key.is_empty() && l.contains(key))
        .map(|(i, _)| i + 1)
        .unwrap_or(from)
}

type Invalid = (Option<usize>, String, String);

/// Checks serde cannot express: impossible numbers, blocks that are not exactly one of
/// new/linker/placeholder, names used before they exist.
fn validate(sc: &Scenario, _text: &str) -> Result<(), Invalid> {
    if sc.name.is_empty() || sc.name.contains(char::is_whitespace) {
        return Err((
            None,
            "name".into(),
            format!("`{}` must be non-empty without spaces", sc.name),
        ));
    }
    if sc.verifies.is_empty() {
        return Err((
            None,
            "verifies".into(),
            "list at least one checklist item (C-NNN) the scenario verifies".into(),
        ));
    }
    if sc.steps.is_empty() {
        return Err((
            None,
            "step".into(),
            "a scenario needs at least one [[step]]".into(),
        ));
    }
    if let Some(0) = sc.device.max_tcp {
        return Err((
            None,
            "device.max_tcp".into(),
            "0 is impossible: at least 1".into(),
        ));
    }
    if sc.parameters.tcp_maximum_retransmissions == Some(0) {
        return Err((
            None,
            "parameters.tcp_maximum_retransmissions".into(),
            "0 is impossible: 1..=255".into(),
        ));
    }
    if let Some(q) = sc.device.queue_pairs {
        if !(2..=256).contains(&q) {
            return Err((
                None,
                "device.queue_pairs".into(),
                format!("{q} is impossible: 2..=256 (pair 0 NIC, pair 1 control)"),
            ));
        }
    }
    for (i, step) in sc.steps.iter().enumerate() {
        let k = |f: &str| format!("step[{i}].{}.{f}", step.name());
        let bad = |f: &str, m: String| Err((Some(i), k(f), m));
        let ring_only = match step {
            Step::BadRequest { .. } => Some("kind"),
            Step::Update {
                expect_error: Some(_),
                ..
            }
            | Step::Invalidate {
                expect_error: Some(_),
                ..
            }
            | Step::Terminate {
                expect_error: Some(_),
                ..
            } => Some("expect_error"),
            _ => None,
        };
        if let (Some(f), DriverKind::Ndis) = (ring_only, sc.driver) {
            return bad(
                f,
                "ERROR completions of the control ring are below the NDIS interface: put \
                 `driver = \"ring\"` at the top of the scenario"
                    .into(),
            );
        }
        match step {
            Step::OffloadSet { connections, .. }
                if *connections == 0 || *connections as usize > MAX_TCP_OBJECTS =>
            {
                return bad(
                    "connections",
                    format!("{connections} is impossible: 1..={MAX_TCP_OBJECTS}"),
                );
            }
            Step::Offload {
                blocks,
                expect_blocks,
                ..
            } => {
                if blocks.is_empty() {
                    return bad("blocks", "an offload tree needs at least one block".into());
                }
                for (b, spec) in blocks.iter().enumerate() {
                    let roles = [
                        spec.new.is_some(),
                        spec.linker.is_some(),
                        spec.placeholder.is_some(),
                    ];
                    if roles.iter().filter(|x| **x).count() != 1 {
                        return bad(
                            &format!("blocks[{b}]"),
                            "each block is exactly one of `new = KIND`, `linker = NAME`, \
                             `placeholder = KIND`"
                                .into(),
                        );
                    }
                    if spec.new.is_some() && spec.name.is_none() {
                        return bad(
                            &format!("blocks[{b}].name"),
                            "a new object needs a name".into(),
                        );
                    }
                    for (f, v) in [("dependent", spec.dependent), ("next", spec.next)] {
                        if let Some(v) = v {
                            if v as usize >= blocks.len() || v as usize == b {
                                return bad(
                                    &format!("blocks[{b}].{f}"),
                                    format!(
                                        "{v} is impossible: the tree has blocks 0..{} and a \
                                         block cannot link to itself",
                                        blocks.len()
                                    ),
                                );
                            }
                        }
                    }
                    if let Some(mtu) = spec.path_mtu {
                        if !(68..=65_535).contains(&mtu) {
                            return bad(
                                &format!("blocks[{b}].path_mtu"),
                                format!("{mtu} is impossible: 68..=65535"),
                            );
                        }
                    }
                    if let Some(v) = spec.vlan_id {
                        if v > 4094 {
                            return bad(
                                &format!("blocks[{b}].vlan_id"),
                                format!("{v} is impossible: 0..=4094"),
                            );
                        }
                    }
                    if let Some(m) = &spec.dl_source_address {
                        if crate::testbed::parse_mac(m).is_none() {
                            return bad(
                                &format!("blocks[{b}].dl_source_address"),
                                format!("`{m}` is not a MAC address aa:bb:cc:dd:ee:ff"),
                            );
                        }
                    }
                }
                if let Some(e) = expect_blocks {
                    if e.len() != blocks.len() {
                        return bad(
                            "expect_blocks",
                            format!("{} statuses for {} blocks", e.len(), blocks.len()),
                        );
                    }
                }
            }
            Step::Update { set, .. } => {
                if !(set.touches_neighbor() || set.touches_path() || set.touches_tcp()) {
                    return bad("set", "name at least one cached variable to update".into());
                }
                if let Some(m) = &set.dl_destination_address {
                    if crate::testbed::parse_mac(m).is_none() {
                        return bad(
                            "set.dl_destination_address",
                            format!("`{m}` is not a MAC address aa:bb:cc:dd:ee:ff"),
                        );
                    }
                }
                if let Some(mtu) = set.path_mtu {
                    if !(68..=65_535).contains(&mtu) {
                        return bad("set.path_mtu", format!("{mtu} is impossible: 68..=65535"));
                    }
                }
                if let Some(fl) = set.flow_label {
                    if fl >= 1 << 20 {
                        return bad(
                            "set.flow_label",
                            format!("{fl} is impossible: a flow label has 20 bits"),
                        );
                    }
                }
                if let Some(p) = set.user_priority {
                    if p > 7 {
                        return bad("set.user_priority", format!("{p} is impossible: 0..=7"));
                    }
                }
            }
            Step::ExpectEvents {
                kind,
                reason,
                objects,
                count,
                ..
            } => {
                if reason.is_some() && *kind != EventKind::Retrieve {
                    return bad(
                        "reason",
                        "only `retrieve` events carry an upload reason".into(),
                    );
                }
                if objects.is_some() == count.is_some() {
                    return bad(
                        "objects",
                        "give exactly one of `objects` (one event each) or `count`".into(),
                    );
                }
                if *count == Some(0) {
                    return bad("count", "0 is impossible: use expect_no_events".into());
                }
            }
            Step::BadRequest { kind, object, .. } => {
                let needs = matches!(
                    kind,
                    BadRequestKind::WrongLayerHandle
                        | BadRequestKind::StaleHandle
                        | BadRequestKind::ConstUpdate
                );
                if needs && object.is_none() {
                    return bad("object", format!("{kind:?} needs `object = NAME`"));
                }
            }
            Step::Impair {
                loss,
                reorder,
                duplicate,
                ..
            } => {
                for (f, v) in [
                    ("loss", loss),
                    ("reorder", reorder),
                    ("duplicate", duplicate),
                ] {
                    if !(0.0..=1.0).contains(v) {
                        return bad(f, format!("{v} is impossible: a probability in 0.0..=1.0"));
                    }
                }
            }
            Step::Receive {
                accept: Some(_),
                mode: ReceiveMode::Posted,
                ..
            } => {
                return bad(
                    "accept",
                    "only `mode = \"indicated\"` takes `accept` (posted buffers take everything)"
                        .into(),
                );
            }
            Step::Send { bytes, .. }
            | Step::Receive { bytes, .. }
            | Step::PeerWrite { bytes, .. }
                if *bytes == 0 =>
            {
                return bad("bytes", "0 is impossible: at least 1 byte".into());
            }
            Step::ExpectNoEvents { wait_ms, .. } if *wait_ms > 10_000 => {
                return bad("wait_ms", format!("{wait_ms} is impossible: at most 10000"));
            }
            Step::Open { port, .. } if *port == 0 => {
                return bad("port", "0 is impossible: 1..=65535".into());
            }
            Step::Open { family, .. } if *family == Family::Both => {
                return bad("family", "a connection is ipv4 or ipv6, not both".into());
            }
            Step::Disconnect {
                peer_sha256: Some(h),
                ..
            } if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) => {
                return bad(
                    "peer_sha256",
                    format!("`{h}` is not a SHA-256 (64 hex digits)"),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every `*.toml` under the given paths (files as given, directories recursively), sorted.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| ScenarioError {
                file: p.clone(),
                line: None,
                key: None,
                message: format!("cannot list: {e}"),
            })?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(ScenarioError {
                file: p.clone(),
                line: None,
                key: None,
                message: "no such file or directory".into(),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "toml")
            // Device policy files (`*.policy.toml`) live beside the scenarios using them.
            && !p.to_string_lossy().ends_with(".policy.toml")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}
