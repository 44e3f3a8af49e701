//! A hashed timer wheel keyed by tick (DESIGN rule 7: cost per timer independent of the number
//! of connections). Entries carry their absolute tick; an entry whose slot comes round before
//! its tick simply stays. Stale entries (a connection re-armed earlier or later) are filtered
//! by the engine, which keeps each connection's one current deadline.

use crate::time::Tick;

const SLOTS: usize = 1024;
const MASK: u64 = SLOTS as u64 - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tick: Tick,
    pub key: u32,
}

#[derive(Debug)]
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    occupied: [u64; SLOTS / 64],
    /// Every tick up to and including this one has been expired.
    cursor: Tick,
    len: usize,
}

impl TimerWheel {
    pub fn new(start: Tick) -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; SLOTS / 64],
            cursor: start,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, tick: Tick, key: u32) {
        let tick = tick.max(self.cursor + 1);
        let slot = (tick & MASK) as usize;
        self.slots[slot].push(Entry { tick, key });
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Move to `now`, handing every entry with `tick <= now` to `fire`.
    pub fn expire(&mut self, now: Tick, mut fire: impl FnMut(Entry)) {
        if now <= self.cursor {
            return;
        }
        let span = (now - self.cursor).min(SLOTS as u64);
        for i in 1..=span {
            let slot = ((self.cursor + i) & MASK) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let v = &mut self.slots[slot];
            let mut j = 0;
            while j < v.len() {
                if v[j].tick <= now {
                    let e = v.swap_remove(j);
                    self.len -= 1;
                    fire(e);
                } else {
                    j += 1;
                }
            }
            if v.is_empty() {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        self.cursor = now;
    }

    /// A tick at or before the earliest entry (exact when it lies within one wheel turn).
    pub fn next_tick(&self) -> Option<Tick> {
        if self.len == 0 {
            return None;
        }
        let start = ((self.cursor + 1) & MASK) as usize;
        for d in 0..SLOTS {
            let slot = (start + d) % SLOTS;
            let word = self.occupied[slot / 64];
            if word == 0 {
                continue;
            }
            if word & (1 << (slot % 64)) != 0 {
                let t = self.cursor + 1 + d as u64;
                let earliest = self.slots[slot].iter().map(|e| e.tick).min().unwrap_or(t);
                return Some(if earliest == t { t } else { t.min(earliest) });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_including_beyond_one_turn() {
        let mut w = TimerWheel::new(0);
        w.insert(5, 1);
        w.insert(3000, 2);
        w.insert(2, 3);
        assert_eq!(w.next_tick(), Some(2));
        let mut fired = vec![];
        w.expire(10, |e| fired.push(e.key));
        assert_eq!(fired, vec![3, 1]);
        w.expire(2999, |e| fired.push(e.key));
        assert_eq!(fired, vec![3, 1], "3000 not due at 2999");
        w.expire(3000, |e| fired.push(e.key));
        assert_eq!(fired, vec![3, 1, 2]);
        assert!(w.is_empty());
    }
}
