//! Little-endian cursor helpers shared by all records. Everything multi-byte in this ABI
//! is little-endian, except IP addresses (network order, C-032) and MAC addresses
//! (transmission order).

use crate::error::{DecodeError, Field};
use alloc::vec::Vec;

/// A bounds-checked reader over bytes copied out of guest memory.
pub struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
    block: Option<u32>,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            block: None,
        }
    }
    pub(crate) fn set_block(&mut self, block: Option<u32>) {
        self.block = block;
    }
    pub(crate) fn field(&self, name: &'static str) -> Field {
        Field {
            block: self.block,
            name,
        }
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn take(&mut self, n: usize, name: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                field: self.field(name),
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn arr<const N: usize>(
        &mut self,
        name: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, name)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, name: &'static str) -> Result<u8, DecodeError> {
        Ok(self.arr::<1>(name)?[0])
    }
    pub(crate) fn u16(&mut self, name: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.arr(name)?))
    }
    pub(crate) fn u32(&mut self, name: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr(name)?))
    }
    pub(crate) fn u64(&mut self, name: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.arr(name)?))
    }
    /// A reserved field: must be zero so it can be given a meaning in a later version.
    pub(crate) fn zero(&mut self, n: usize, name: &'static str) -> Result<(), DecodeError> {
        let s = self.take(n, name)?;
        match s.iter().position(|b| *b != 0) {
            None => Ok(()),
            Some(i) => Err(DecodeError::InvalidValue {
                field: self.field(name),
                value: u64::from(s[i]),
            }),
        }
    }
    pub(crate) fn invalid(&self, name: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidValue {
            field: self.field(name),
            value,
        }
    }
    /// All bytes consumed: trailing garbage is an error, not silently ignored.
    pub(crate) fn finish(&self, name: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::LengthMismatch {
                field: self.field(name),
                declared: self.buf.len() as u64,
                actual: self.pos as u64,
            });
        }
        Ok(())
    }
}

/// Little-endian writer.
pub(crate) trait Wr {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn zeros(&mut self, n: usize);
}

impl Wr for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}
