//! Framing on control rx: how one record travels in one or more posted rx buffers.
//!
//! The driver posts device-writable buffers of at least [`MIN_RX_BUFFER`] bytes. The device
//! writes into each used buffer a 16-byte fragment header and as much of the record as
//! fits; the used length is `16 + fragment_length`. A record longer than one buffer
//! continues in the next used buffers, in order, with no other record in between.
//! ```text
//! 0  u32 sequence         record number, counts from 0 (wraps); same in every fragment
//! 4  u32 record_length    whole record
//! 8  u32 offset           where this fragment's bytes go in the record
//! 12 u32 fragment_length  payload bytes in this buffer
//! ```
//! A buffer shorter than `MIN_RX_BUFFER` is returned unused (used length 0) and must be
//! skipped by the driver; no record is lost by that.

use crate::error::{DecodeError, Field};
use crate::view::FragmentHeaderView;
use crate::wire::Wr;
use alloc::vec::Vec;

pub const FRAGMENT_HEADER_LEN: usize = 16;
/// Smallest rx buffer the device writes into.
pub const MIN_RX_BUFFER: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    pub sequence: u32,
    pub record_length: u32,
    pub offset: u32,
    pub fragment_length: u32,
}

impl FragmentHeader {
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u32(self.sequence);
        w.u32(self.record_length);
        w.u32(self.offset);
        w.u32(self.fragment_length);
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let v = FragmentHeaderView::new_checked(bytes)?;
        Ok(Self {
            sequence: v.sequence(),
            record_length: v.record_length(),
            offset: v.offset(),
            fragment_length: v.fragment_length(),
        })
    }
}

/// Device side: the bytes for the next rx buffer of `capacity` bytes, carrying the record
/// from `offset` on. Returns the buffer contents and the number of record bytes it took;
/// `None` if `capacity` is below [`MIN_RX_BUFFER`] or nothing is left.
pub fn fragment(
    record: &[u8],
    sequence: u32,
    offset: usize,
    capacity: usize,
) -> Option<(Vec<u8>, usize)> {
    if capacity < MIN_RX_BUFFER || offset >= record.len() {
        return None;
    }
    let n = (capacity - FRAGMENT_HEADER_LEN).min(record.len() - offset);
    let mut w = Vec::with_capacity(FRAGMENT_HEADER_LEN + n);
    FragmentHeader {
        sequence,
        record_length: record.len() as u32,
        offset: offset as u32,
        fragment_length: n as u32,
    }
    .emit(&mut w);
    w.extend_from_slice(&record[offset..offset + n]);
    Some((w, n))
}

/// Driver side: feeds used rx buffers in used-ring order, yields whole records.
#[derive(Debug, Clone)]
pub struct Reassembler {
    max_record: usize,
    current: Option<(u32, Vec<u8>, usize)>,
}

fn framing(name: &'static str) -> DecodeError {
    DecodeError::Framing {
        field: Field::new(name),
    }
}

impl Reassembler {
    /// `max_record` bounds the memory one record may take.
    pub fn new(max_record: usize) -> Self {
        Self {
            max_record,
            current: None,
        }
    }

    /// Feed the used part of one rx buffer. `Ok(Some(record))` when a record is complete.
    /// On error the partial record is dropped and the next fragment with offset 0 starts
    /// afresh.
    pub fn push(&mut self, used: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        if used.is_empty() {
            return Ok(None); // buffer returned unused (too small)
        }
        let r = self.push_inner(used);
        if r.is_err() {
            self.current = None;
        }
        r
    }

    fn push_inner(&mut self, used: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        let h = FragmentHeader::decode(used)?;
        let payload = &used[FRAGMENT_HEADER_LEN..];
        if h.fragment_length as usize != payload.len() || h.fragment_length == 0 {
            return Err(framing("fragment.fragment_length"));
        }
        let total = h.record_length as usize;
        if total == 0 || total > self.max_record {
            return Err(framing("fragment.record_length"));
        }
        if h.offset == 0 {
            if self.current.is_some() {
                return Err(framing("fragment.offset"));
            }
            self.current = Some((h.sequence, Vec::with_capacity(total), total));
        }
        let Some((seq, buf, len)) = self.current.as_mut() else {
            return Err(framing("fragment.offset"));
        };
        if *seq != h.sequence {
            return Err(framing("fragment.sequence"));
        }
        if *len != total {
            return Err(framing("fragment.record_length"));
        }
        if h.offset as usize != buf.len() || buf.len() + payload.len() > total {
            return Err(framing("fragment.offset"));
        }
        buf.extend_from_slice(payload);
        if buf.len() == total {
            return Ok(self.current.take().map(|(_, b, _)| b));
        }
        Ok(None)
    }
}
