//! The sender's SACK scoreboard (RFC 2018, RFC 6675): which ranges above SND.UNA the peer
//! reported as received.

use crate::seq;

/// Most SACKed ranges remembered; beyond that the oldest information is dropped (it is
/// advisory: the cumulative ACK is what frees data).
pub const MAX_SACKED_RANGES: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    /// `[start, end)`, sorted, disjoint.
    ranges: Vec<(u32, u32)>,
}

impl Scoreboard {
    pub fn new() -> Self {
        Scoreboard {
            ranges: Vec::with_capacity(MAX_SACKED_RANGES),
        }
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// Record a SACK block, clipped to `[una, max)`. Returns true if it added information.
    pub fn add(&mut self, s: u32, e: u32, una: u32, max: u32) -> bool {
        let s = seq::max(s, una);
        let e = seq::min(e, max);
        if !seq::lt(s, e) {
            return false;
        }
        let (mut s, mut e) = (s, e);
        let mut i = 0;
        let mut changed = true;
        while i < self.ranges.len() {
            let (rs, re) = self.ranges[i];
            if seq::lt(re, s) {
                i += 1;
                continue;
            }
            if seq::lt(e, rs) {
                break;
            }
            if seq::le(rs, s) && seq::ge(re, e) {
                changed = false;
            }
            s = seq::min(s, rs);
            e = seq::max(e, re);
            self.ranges.remove(i);
        }
        if self.ranges.len() >= MAX_SACKED_RANGES {
            self.ranges.remove(0);
            i = i.saturating_sub(1);
        }
        self.ranges.insert(i, (s, e));
        changed
    }

    /// Forget everything below the cumulative ACK.
    pub fn remove_below(&mut self, una: u32) {
        while let Some(r) = self.ranges.first_mut() {
            if seq::le(r.1, una) {
                self.ranges.remove(0);
            } else {
                if seq::lt(r.0, una) {
                    r.0 = una;
                }
                break;
            }
        }
    }

    pub fn sacked_bytes(&self) -> u32 {
        self.ranges.iter().map(|&(s, e)| seq::dist(s, e)).sum()
    }

    pub fn highest(&self) -> Option<u32> {
        self.ranges.last().map(|r| r.1)
    }

    /// If `x` lies in a SACKed range, its end.
    pub fn sacked_end(&self, x: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|&&(s, e)| seq::in_range(x, s, e))
            .map(|r| r.1)
    }

    /// RFC 6675 IsLost, as a boundary: every unSACKed byte below the returned sequence number
    /// has at least `dup_thresh_bytes` SACKed bytes above it, so it is deemed lost.
    pub fn lost_boundary(&self, dup_thresh_bytes: u32) -> Option<u32> {
        let mut above = 0u32;
        for &(s, e) in self.ranges.iter().rev() {
            above = above.saturating_add(seq::dist(s, e));
            if above >= dup_thresh_bytes {
                return Some(s);
            }
        }
        None
    }

    /// The first unSACKed range at or after `from` and below `limit`.
    pub fn next_hole(&self, from: u32, limit: u32) -> Option<(u32, u32)> {
        let mut x = from;
        for &(s, e) in &self.ranges {
            if seq::le(e, x) {
                continue;
            }
            if seq::lt(x, s) {
                let end = seq::min(s, limit);
                return seq::lt(x, end).then_some((x, end));
            }
            x = e;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_blocks_and_finds_holes() {
        let mut sb = Scoreboard::new();
        assert!(sb.add(200, 300, 100, 1000));
        assert!(sb.add(400, 500, 100, 1000));
        assert!(sb.add(300, 350, 100, 1000));
        assert!(!sb.add(210, 220, 100, 1000), "already known");
        assert_eq!(sb.ranges(), &[(200, 350), (400, 500)]);
        assert_eq!(sb.next_hole(100, 1000), Some((100, 200)));
        assert_eq!(sb.next_hole(200, 1000), Some((350, 400)));
        assert_eq!(sb.sacked_bytes(), 250);
        assert_eq!(sb.lost_boundary(120), Some(200));
        assert_eq!(sb.lost_boundary(100), Some(400));
        sb.remove_below(250);
        assert_eq!(sb.ranges(), &[(250, 350), (400, 500)]);
    }
}
