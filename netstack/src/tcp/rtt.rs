//! Round-trip estimation and RTO per RFC 6298, in ticks (C-014), kept in the chimney's scaled
//! form: `srtt8` = 8 × SRTT and `rttvar4` = 4 × RTTVAR (spec digest §2.6), so export is exact.

use crate::time::Tick;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    pub srtt8: u16,
    pub rttvar4: u16,
    /// At least one sample taken (RFC 6298 (2.2) vs (2.3)).
    pub sampled: bool,
}

impl RttEstimator {
    pub fn new() -> Self {
        RttEstimator {
            srtt8: 0,
            rttvar4: 0,
            sampled: false,
        }
    }

    /// Take one RTT measurement `r` ticks.
    pub fn sample(&mut self, r: Tick) {
        let r = r.min(8000) as i64;
        let (s, v) = if !self.sampled {
            // (2.2): SRTT = R, RTTVAR = R/2.
            (8 * r, 2 * r)
        } else {
            // (2.3): RTTVAR = 3/4 RTTVAR + 1/4 |SRTT − R|, SRTT = 7/8 SRTT + 1/8 R.
            let s = i64::from(self.srtt8);
            let v = i64::from(self.rttvar4);
            let err = (s / 8 - r).abs();
            (s - s / 8 + r, v - v / 4 + err)
        };
        self.srtt8 = s.clamp(0, i64::from(u16::MAX)) as u16;
        self.rttvar4 = v.clamp(0, i64::from(u16::MAX)) as u16;
        self.sampled = true;
    }

    /// RTO = SRTT + max(G, 4·RTTVAR), clamped to [min, max]; `initial` before any sample.
    pub fn rto(&self, initial: Tick, min: Tick, max: Tick) -> Tick {
        if !self.sampled {
            return initial.clamp(min, max);
        }
        let rto = u64::from(self.srtt8) / 8 + u64::from(self.rttvar4).max(1);
        rto.clamp(min, max)
    }
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_sets_srtt_and_half_variance_rfc6298_2_2() {
        let mut e = RttEstimator::new();
        e.sample(100);
        assert_eq!((e.srtt8, e.rttvar4), (800, 200));
        // RTO = 100 + 4·50 = 300.
        assert_eq!(e.rto(1000, 1, 60_000), 300);
    }

    #[test]
    fn later_samples_smooth_per_rfc6298_2_3() {
        let mut e = RttEstimator::new();
        e.sample(100);
        e.sample(60);
        // RTTVAR = 3/4·50 + 1/4·40 = 47.5 → 4× = 190; SRTT = 7/8·100 + 60/8 = 95 → 8× = 760.
        assert_eq!((e.srtt8, e.rttvar4), (760, 190));
    }
}
