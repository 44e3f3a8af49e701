//! Fixed-capacity byte rings for the send and receive side of a connection.
//!
//! Both are allocated once when the connection is made; moving data never allocates (DESIGN
//! rule 7). The receive ring also keeps out-of-order data in place and remembers which ranges
//! it holds, so SACK blocks (RFC 2018) can be generated from it.

use crate::seq;

/// Bytes the application has handed over and the peer has not acknowledged yet.
#[derive(Debug, Clone)]
pub struct SendBuffer {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl SendBuffer {
    pub fn new(capacity: usize) -> Self {
        SendBuffer {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Append as much of `data` as fits; returns how much was taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        let cap = self.buf.len();
        let start = (self.head + self.len) % cap;
        let first = n.min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Drop `n` bytes from the front (they were acknowledged).
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
    }

    /// The bytes at `[off, off+len)` as at most two slices (the ring may wrap).
    pub fn slices(&self, off: usize, len: usize) -> (&[u8], &[u8]) {
        let off = off.min(self.len);
        let len = len.min(self.len - off);
        let cap = self.buf.len();
        let start = (self.head + off) % cap;
        let first = len.min(cap - start);
        (&self.buf[start..start + first], &self.buf[..len - first])
    }

    /// Everything buffered, copied out (export).
    pub fn to_vec(&self) -> Vec<u8> {
        let (a, b) = self.slices(0, self.len);
        let mut v = Vec::with_capacity(self.len);
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        v
    }
}

/// Most out-of-order ranges the receive side remembers; a segment that would need more is
/// dropped (the sender retransmits it).
pub const MAX_OOO_RANGES: usize = 32;

/// Received bytes: in-order data waiting for the application, then out-of-order data.
#[derive(Debug, Clone)]
pub struct RecvBuffer {
    buf: Box<[u8]>,
    head: usize,
    readable: usize,
    /// Out-of-order ranges held, absolute sequence numbers `[start, end)`, sorted, disjoint,
    /// all beyond RCV.NXT.
    ooo: Vec<(u32, u32)>,
}

impl RecvBuffer {
    pub fn new(capacity: usize) -> Self {
        RecvBuffer {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            readable: 0,
            ooo: Vec::with_capacity(MAX_OOO_RANGES),
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub fn readable(&self) -> usize {
        self.readable
    }
    /// Space beyond the readable data (the receive window can be at most this).
    pub fn window(&self) -> usize {
        self.buf.len() - self.readable
    }
    pub fn ooo_ranges(&self) -> &[(u32, u32)] {
        &self.ooo
    }

    /// Store segment data `[seq, seq+data.len())` given RCV.NXT; returns how far RCV.NXT moves.
    pub fn write(&mut self, rcv_nxt: u32, seq: u32, data: &[u8]) -> u32 {
        // Trim what is already received, and what lies beyond the buffer.
        let (mut seq, mut data) = (seq, data);
        if seq::lt(seq, rcv_nxt) {
            let skip = seq::dist(seq, rcv_nxt) as usize;
            if skip >= data.len() {
                return 0;
            }
            data = &data[skip..];
            seq = rcv_nxt;
        }
        let off = seq::dist(rcv_nxt, seq) as usize;
        let room = self.window();
        if off >= room {
            return 0;
        }
        let data = &data[..data.len().min(room - off)];
        if data.is_empty() {
            return 0;
        }
        let end = seq.wrapping_add(data.len() as u32);
        if off > 0 && !self.insert_range(seq, end) {
            return 0;
        }
        let cap = self.buf.len();
        let start = (self.head + self.readable + off) % cap;
        let first = data.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        if off > 0 {
            return 0;
        }
        // In order: advance over this segment and every out-of-order range it now reaches.
        let mut new_nxt = end;
        while let Some(&(s, e)) = self.ooo.first() {
            if seq::le(s, new_nxt) {
                new_nxt = seq::max(new_nxt, e);
                self.ooo.remove(0);
            } else {
                break;
            }
        }
        let adv = seq::dist(rcv_nxt, new_nxt);
        self.readable += adv as usize;
        adv
    }

    /// Merge `[s, e)` into the out-of-order set. False if it would exceed the bound.
    fn insert_range(&mut self, mut s: u32, mut e: u32) -> bool {
        let mut i = 0;
        while i < self.ooo.len() {
            let (rs, re) = self.ooo[i];
            if seq::lt(re, s) {
                i += 1;
                continue;
            }
            if seq::lt(e, rs) {
                break;
            }
            // Overlapping or adjacent: absorb.
            s = seq::min(s, rs);
            e = seq::max(e, re);
            self.ooo.remove(i);
        }
        if self.ooo.len() >= MAX_OOO_RANGES {
            return false;
        }
        self.ooo.insert(i, (s, e));
        true
    }

    /// Change the capacity (a host's InitialRcvWnd update, C-085), keeping the readable and
    /// the out-of-order data at their offsets (`rcv_nxt` = RCV.NXT, the end of the readable
    /// data). Never below what is held: the caller keeps promised window space too.
    /// Allocates, but only on a host update, not per segment.
    pub fn resize(&mut self, rcv_nxt: u32, capacity: usize) {
        let ooo_end = self
            .ooo
            .last()
            .map_or(0, |&(_, e)| seq::dist(rcv_nxt, e) as usize);
        let held = self.readable + ooo_end;
        let capacity = capacity.max(held).max(1);
        let cap = self.buf.len();
        let mut v = vec![0u8; capacity].into_boxed_slice();
        let first = held.min(cap - self.head);
        v[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        v[first..held].copy_from_slice(&self.buf[..held - first]);
        self.buf = v;
        self.head = 0;
    }

    /// Copy out up to `out.len()` in-order bytes.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.readable);
        let cap = self.buf.len();
        let first = n.min(cap - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.head = (self.head + n) % cap;
        self.readable -= n;
        n
    }

    /// The in-order bytes, copied out (export). Out-of-order data is not exported: the
    /// chimney state has no place for it, and the peer retransmits it.
    pub fn readable_to_vec(&self) -> Vec<u8> {
        let cap = self.buf.len();
        let first = self.readable.min(cap - self.head);
        let mut v = Vec::with_capacity(self.readable);
        v.extend_from_slice(&self.buf[self.head..self.head + first]);
        v.extend_from_slice(&self.buf[..self.readable - first]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_buffer_wraps_and_returns_two_slices() {
        let mut b = SendBuffer::new(8);
        assert_eq!(b.push(b"abcdef"), 6);
        b.advance(4);
        assert_eq!(b.push(b"ghijkl"), 6);
        let (x, y) = b.slices(0, 8);
        assert_eq!([x, y].concat(), b"efghijkl");
        assert_eq!(b.push(b"z"), 0, "buffer full");
    }

    #[test]
    fn recv_buffer_reassembles_out_of_order() {
        let mut r = RecvBuffer::new(16);
        let base = u32::MAX - 3; // crosses the sequence wrap
        assert_eq!(r.write(base, base.wrapping_add(4), b"efgh"), 0);
        assert_eq!(
            r.ooo_ranges(),
            &[(base.wrapping_add(4), base.wrapping_add(8))]
        );
        assert_eq!(r.write(base, base, b"abcd"), 8);
        assert!(r.ooo_ranges().is_empty());
        let mut out = [0u8; 16];
        assert_eq!(r.read(&mut out), 8);
        assert_eq!(&out[..8], b"abcdefgh");
    }

    #[test]
    fn recv_buffer_resize_keeps_readable_and_out_of_order_data() {
        let mut r = RecvBuffer::new(8);
        let mut out = [0u8; 16];
        assert_eq!(r.write(0, 0, b"abcdef"), 6);
        assert_eq!(r.read(&mut out[..4]), 4); // head at 4: the ring wraps below
        assert_eq!(r.write(6, 6, b"gh"), 2);
        assert_eq!(r.write(8, 10, b"kl"), 0, "out of order, 2 beyond RCV.NXT");
        r.resize(8, 32);
        assert_eq!(r.capacity(), 32);
        assert_eq!(r.window(), 32 - 4);
        assert_eq!(r.write(8, 8, b"ij"), 4, "hole filled, the kept range joins");
        assert_eq!(r.read(&mut out), 8);
        assert_eq!(&out[..8], b"efghijkl");
        r.resize(12, 2);
        assert_eq!(r.capacity(), 2, "shrinks when nothing is held");
    }

    #[test]
    fn recv_buffer_trims_duplicates_and_overflow() {
        let mut r = RecvBuffer::new(4);
        assert_eq!(r.write(100, 98, b"xxab"), 2);
        assert_eq!(
            r.write(102, 102, b"cdefgh"),
            2,
            "only the window's worth is taken"
        );
        let mut out = [0u8; 8];
        assert_eq!(r.read(&mut out), 4);
        assert_eq!(&out[..4], b"abcd");
    }
}
