//! NDIS status codes with their real numeric values (digest §5.5), and the ABI's reason
//! codes for ERROR completions.

use core::fmt;

/// An `NDIS_STATUS` value (32 bits, little-endian on the ring).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NdisStatus(pub u32);

macro_rules! statuses {
    ($($name:ident = $val:expr;)*) => {
        impl NdisStatus {
            $(pub const $name: NdisStatus = NdisStatus($val);)*
            /// The `NDIS_STATUS_*` name, if this is a known code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(concat!("NDIS_STATUS_", stringify!($name))),)*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    SUCCESS = 0x0000_0000;
    PENDING = 0x0000_0103;
    NOT_ACCEPTED = 0x0001_0003;
    FAILURE = 0xC000_0001;
    RESOURCES = 0xC000_009A;
    NOT_SUPPORTED = 0xC000_00BB;
    INVALID_STATE = 0xC000_0184;
    REQUEST_ABORTED = 0xC001_000C;
    PAUSED = 0xC023_002A;
    OFFLOAD_PAUSE = 0x4002_0001;
    UPLOAD_ALL = 0x4002_0002;
    OFFLOAD_RESUME = 0x4002_0003;
    OFFLOAD_PARTIAL_SUCCESS = 0x4002_0004;
    OFFLOAD_STATE_INVALID = 0x4002_0005;
    TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = 0x4002_000B;
    UPLOAD_IN_PROGRESS = 0xC023_1001;
    REQUEST_UPLOAD = 0xC023_1002;
    UPLOAD_REQUESTED = 0xC023_1003;
    OFFLOAD_TCP_ENTRIES = 0xC023_1004;
    OFFLOAD_PATH_ENTRIES = 0xC023_1005;
    OFFLOAD_NEIGHBOR_ENTRIES = 0xC023_1006;
    OFFLOAD_IP_ADDRESS_ENTRIES = 0xC023_1007;
    OFFLOAD_HW_ADDRESS_ENTRIES = 0xC023_1008;
    OFFLOAD_VLAN_ENTRIES = 0xC023_1009;
    OFFLOAD_TCP_XMIT_BUFFER = 0xC023_100A;
    OFFLOAD_TCP_RCV_BUFFER = 0xC023_100B;
    OFFLOAD_TCP_RCV_WINDOW = 0xC023_100C;
    OFFLOAD_VLAN_MISMATCH = 0xC023_100D;
    OFFLOAD_DATA_NOT_ACCEPTED = 0xC023_100E;
    OFFLOAD_POLICY = 0xC023_100F;
    OFFLOAD_DATA_PARTIALLY_ACCEPTED = 0xC023_1010;
    OFFLOAD_REQUEST_RESET = 0xC023_1011;
    OFFLOAD_CONNECTION_REJECTED = 0xC023_1012;
    // Documented but absent from the public ndis.h (digest §7.1 item 10): this ABI assigns
    // it a value with the "customer" bit (bit 29) set, so it cannot collide with a
    // Microsoft-assigned code.
    OFFLOAD_PATH_MTU = 0xE023_1013;
}

impl NdisStatus {
    /// NT-style severity: the two top bits 11 mean error.
    pub fn is_error(self) -> bool {
        self.0 & 0xC000_0000 == 0xC000_0000
    }
}

impl fmt::Debug for NdisStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({:#010x})", self.0),
            None => write!(f, "NdisStatus({:#010x})", self.0),
        }
    }
}

impl fmt::Display for NdisStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

macro_rules! reasons {
    ($($(#[$m:meta])* $name:ident = $val:expr,)*) => {
        /// Why the device refused a request with an ERROR completion (docs/ring-abi.md §8).
        /// The spec leaves invalid input unspecified (digest §7.1 item 21); this enum is
        /// the ABI's answer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Reason {
            $($(#[$m])* $name = $val,)*
        }
        impl Reason {
            pub fn from_u16(v: u16) -> Option<Reason> {
                match v {
                    $($val => Some(Reason::$name),)*
                    _ => None,
                }
            }
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
        }
    };
}

reasons! {
    /// The record ends before a field.
    Truncated = 1,
    /// A field holds a value this ABI does not allow.
    InvalidValue = 2,
    /// A length field disagrees with the bytes present.
    LengthMismatch = 3,
    /// Unknown request opcode.
    UnknownOpcode = 4,
    /// No ABI version in common.
    UnsupportedVersion = 5,
    /// A request other than NEGOTIATE before NEGOTIATE succeeded.
    NotNegotiated = 6,
    /// A state-manipulation request before SET_PARAMETERS succeeded.
    ParametersNotSet = 7,
    /// A `next`/`dependent` index outside the block array.
    LinkOutOfRange = 8,
    /// A block reached twice while walking the tree (cycle or shared block).
    LinkCycle = 9,
    /// A block not reachable from the root (block 0).
    UnreachableBlock = 10,
    /// Dependent not one layer up, or next block on another layer.
    LayerOrder = 11,
    /// State flag / role / type combination not allowed for this operation.
    RoleState = 12,
    /// An update tried to change constant variables (C-023).
    ConstUpdateRefused = 13,
    /// An update tried to change delegated variables (C-025).
    DelegatedUpdateRefused = 14,
    /// A handle that never named an object.
    UnknownHandle = 15,
    /// A handle whose object was terminated (generation mismatch).
    StaleHandle = 16,
    /// A handle of another layer than the block's type.
    HandleLayerMismatch = 17,
    /// More blocks than the device accepts in one tree.
    TooManyBlocks = 18,
    /// A descriptor points outside guest memory.
    DescriptorOutOfMemory = 19,
    /// The descriptor chain is shorter than the record header or declared length.
    ChainTooShort = 20,
    /// A device-writable descriptor in a request chain (must be driver-written only).
    WritableDescriptor = 21,
    /// The request chain is longer than the device's maximum request size.
    ChainTooLong = 22,
    /// The descriptor chain itself is malformed (bad index, loop, bad indirect table).
    MalformedChain = 23,
    /// The same object is referenced by two blocks of one tree.
    DuplicateReference = 24,
    /// Operation on an invalidated object that the spec forbids (update, C-094; linking).
    ObjectInvalidated = 25,
    /// Terminate of a path/neighbor whose dependents are not terminated with it (C-110).
    HasDependents = 26,
    /// A feature not supported by this ABI version.
    Unsupported = 27,
    /// Fragment framing error (rx side).
    Framing = 28,
}
