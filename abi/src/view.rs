//! Typed views over the fixed-size headers of the ring (STYLE.md, the smoltcp model): a
//! view wraps any byte buffer (`AsRef<[u8]>`, `AsMut<[u8]>` to write), a private `field`
//! module names each field's byte range, `new_checked` refuses a buffer too short, and
//! there is one accessor (and setter) per field. The representations (`RequestHeader`,
//! `RecordHeader`, `FragmentHeader`, `Block`) are parsed from these views; the views are
//! also handy to inspect or patch encoded records (tests building malformed input).
//!
//! Views always sit over bytes already copied out of guest memory, never over memory the
//! guest can still change.

use crate::error::{DecodeError, Field};

macro_rules! view {
    (
        $(#[$m:meta])* $name:ident, $len:expr, $what:literal,
        { $($get:ident / $set:ident : $ty:ty = $start:expr;)* }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Size of the structure in bytes.
            pub const LEN: usize = $len;

            /// Wrap without checking the length (accessors then panic on a short buffer).
            pub fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wrap, refusing a buffer shorter than the structure.
            pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
                let have = buffer.as_ref().len();
                if have < $len {
                    return Err(DecodeError::Truncated {
                        field: Field::new($what),
                        need: $len,
                        have,
                    });
                }
                Ok(Self { buffer })
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }

            $(
                pub fn $get(&self) -> $ty {
                    const N: usize = core::mem::size_of::<$ty>();
                    let mut a = [0u8; N];
                    a.copy_from_slice(&self.buffer.as_ref()[$start..$start + N]);
                    <$ty>::from_le_bytes(a)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            $(
                pub fn $set(&mut self, v: $ty) {
                    const N: usize = core::mem::size_of::<$ty>();
                    self.buffer.as_mut()[$start..$start + N].copy_from_slice(&v.to_le_bytes());
                }
            )*
        }
    };
}

view!(
    /// Request header (16 bytes) at the start of every request record.
    RequestHeaderView, 16, "header",
    {
        opcode / set_opcode: u16 = 0;
        flags / set_flags: u16 = 2;
        length / set_length: u32 = 4;
        request_id / set_request_id: u64 = 8;
    }
);

view!(
    /// Record header (32 bytes) at the start of every rx record.
    RecordHeaderView, 32, "record",
    {
        kind / set_kind: u16 = 0;
        opcode / set_opcode: u16 = 2;
        length / set_length: u32 = 4;
        request_id / set_request_id: u64 = 8;
        tx_head / set_tx_head: u16 = 16;
        flags / set_flags: u16 = 18;
        status / set_status: u32 = 20;
        count / set_count: u32 = 24;
        reserved / set_reserved: u32 = 28;
    }
);

view!(
    /// Fragment header (16 bytes) at the start of every used rx buffer.
    FragmentHeaderView, 16, "fragment",
    {
        sequence / set_sequence: u32 = 0;
        record_length / set_record_length: u32 = 4;
        offset / set_offset: u32 = 8;
        fragment_length / set_fragment_length: u32 = 12;
    }
);

view!(
    /// One 32-byte block of a state tree.
    BlockView, 32, "tree.blocks",
    {
        state_type / set_state_type: u8 = 0;
        role / set_role: u8 = 1;
        flags / set_flags: u8 = 2;
        revision / set_revision: u8 = 3;
        next / set_next: u32 = 4;
        dependent / set_dependent: u32 = 8;
        reserved / set_reserved: u32 = 12;
        handle / set_handle: u64 = 16;
        host_context / set_host_context: u64 = 24;
    }
);

view!(
    /// One 16-byte block result of a tree completion.
    BlockResultView, 16, "results",
    {
        state_type / set_state_type: u8 = 0;
        flags / set_flags: u8 = 1;
        reserved / set_reserved: u16 = 2;
        status / set_status: u32 = 4;
        handle / set_handle: u64 = 8;
    }
);

/// Offset of block `i` inside an encoded tree request (after the 16-byte request header
/// and the 8-byte tree header).
pub const fn request_block_offset(i: usize) -> usize {
    16 + 8 + i * 32
}

/// Offset of block result `i` inside an encoded tree completion.
pub const fn completion_result_offset(i: usize) -> usize {
    32 + i * 16
}
