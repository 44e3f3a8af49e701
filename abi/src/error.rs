//! Decode errors. Every error names the field it is about (and the block index when the
//! field lives in a state-tree block), so the device can put that name into an ERROR
//! completion and the driver can see exactly what it got wrong.

use core::fmt;

/// Where in a record a problem was found: `block[7].dependent`, `header.opcode`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Index of the tree block the field belongs to, if any.
    pub block: Option<u32>,
    /// Dotted field name as written in docs/ring-abi.md.
    pub name: &'static str,
}

impl Field {
    pub const fn new(name: &'static str) -> Self {
        Self { block: None, name }
    }
    pub const fn in_block(block: u32, name: &'static str) -> Self {
        Self {
            block: Some(block),
            name,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.block {
            Some(b) => write!(f, "block[{b}].{}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Why a record could not be decoded. The variants map one-to-one onto
/// [`crate::Reason`] codes (see [`DecodeError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{field}: record truncated (need {need} bytes, have {have})")]
    Truncated {
        field: Field,
        need: usize,
        have: usize,
    },
    #[error("{field}: invalid value {value:#x}")]
    InvalidValue { field: Field, value: u64 },
    #[error("{field}: length {declared} does not match {actual}")]
    LengthMismatch {
        field: Field,
        declared: u64,
        actual: u64,
    },
    #[error("{field}: unknown opcode {opcode}")]
    UnknownOpcode { field: Field, opcode: u16 },
    #[error("{field}: link to block {target} is outside the block array")]
    LinkOutOfRange { field: Field, target: u32 },
    #[error("{field}: block {target} is reached twice (cycle or shared block)")]
    LinkCycle { field: Field, target: u32 },
    #[error("{field}: block is not reachable from the root")]
    Unreachable { field: Field },
    #[error("{field}: wrong layer order (neighbor -> path -> TCP only)")]
    LayerOrder { field: Field },
    #[error("{field}: state structures do not fit this block's role")]
    RoleState { field: Field },
    #[error("{field}: update may not change constant variables (C-023)")]
    ConstUpdate { field: Field },
    #[error("{field}: update may not change delegated variables (C-025)")]
    DelegatedUpdate { field: Field },
    #[error("{field}: too many blocks ({count}, max {max})")]
    TooManyBlocks { field: Field, count: u64, max: u64 },
    #[error("{field}: not supported in this ABI version")]
    Unsupported { field: Field },
    #[error("{field}: framing error")]
    Framing { field: Field },
}

impl DecodeError {
    /// The field the error is about.
    pub fn field(&self) -> Field {
        match *self {
            DecodeError::Truncated { field, .. }
            | DecodeError::InvalidValue { field, .. }
            | DecodeError::LengthMismatch { field, .. }
            | DecodeError::UnknownOpcode { field, .. }
            | DecodeError::LinkOutOfRange { field, .. }
            | DecodeError::LinkCycle { field, .. }
            | DecodeError::Unreachable { field }
            | DecodeError::LayerOrder { field }
            | DecodeError::RoleState { field }
            | DecodeError::ConstUpdate { field }
            | DecodeError::DelegatedUpdate { field }
            | DecodeError::TooManyBlocks { field, .. }
            | DecodeError::Unsupported { field }
            | DecodeError::Framing { field } => field,
        }
    }

    /// The reason code an ERROR completion carries for this error.
    pub fn reason(&self) -> crate::Reason {
        use crate::Reason as R;
        match self {
            DecodeError::Truncated { .. } => R::Truncated,
            DecodeError::InvalidValue { .. } => R::InvalidValue,
            DecodeError::LengthMismatch { .. } => R::LengthMismatch,
            DecodeError::UnknownOpcode { .. } => R::UnknownOpcode,
            DecodeError::LinkOutOfRange { .. } => R::LinkOutOfRange,
            DecodeError::LinkCycle { .. } => R::LinkCycle,
            DecodeError::Unreachable { .. } => R::UnreachableBlock,
            DecodeError::LayerOrder { .. } => R::LayerOrder,
            DecodeError::RoleState { .. } => R::RoleState,
            DecodeError::ConstUpdate { .. } => R::ConstUpdateRefused,
            DecodeError::DelegatedUpdate { .. } => R::DelegatedUpdateRefused,
            DecodeError::TooManyBlocks { .. } => R::TooManyBlocks,
            DecodeError::Unsupported { .. } => R::Unsupported,
            DecodeError::Framing { .. } => R::Framing,
        }
    }
}
