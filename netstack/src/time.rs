//! Time as the caller hands it in: a monotonic instant in microseconds, and chimney ticks.
//!
//! The engine never reads a clock (sans-io). Protocol timers run in chimney ticks
//! (`TicksPerSecond` ∈ {10, 100, 1000}, C-014): every deadline is a whole tick, and the values
//! exported in state objects (TimeoutDelta, TsRecentAge, SRtt …) are tick counts.

use core::time::Duration;

/// A monotonic point in time, microseconds since an arbitrary origin chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    pub const ZERO: Instant = Instant { micros: 0 };

    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }

    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            micros: millis * 1000,
        }
    }

    pub const fn micros(self) -> u64 {
        self.micros
    }

    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }

    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let add = u64::try_from(d.as_micros()).ok()?;
        Some(Instant {
            micros: self.micros.checked_add(add)?,
        })
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant { micros: u64::MAX })
    }
}

/// A tick count: the unit of every protocol timer (C-014).
pub type Tick = u64;

/// The tick clock of one engine: converts between [`Instant`] and ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickClock {
    ticks_per_second: u32,
}

/// The tick rates the chimney allows (C-014).
pub const ALLOWED_TICKS_PER_SECOND: [u32; 3] = [10, 100, 1000];

impl TickClock {
    /// `ticks_per_second` must be one of [`ALLOWED_TICKS_PER_SECOND`].
    pub fn new(ticks_per_second: u32) -> Option<Self> {
        ALLOWED_TICKS_PER_SECOND
            .contains(&ticks_per_second)
            .then_some(TickClock { ticks_per_second })
    }

    pub fn ticks_per_second(self) -> u32 {
        self.ticks_per_second
    }

    fn micros_per_tick(self) -> u64 {
        1_000_000 / u64::from(self.ticks_per_second)
    }

    /// The tick an instant falls in (rounded down).
    pub fn tick(self, now: Instant) -> Tick {
        now.micros() / self.micros_per_tick()
    }

    /// The instant a tick starts.
    pub fn instant(self, tick: Tick) -> Instant {
        Instant::from_micros(tick.saturating_mul(self.micros_per_tick()))
    }

    /// A duration in whole ticks, rounded up (a timer never fires early), at least `min` ticks.
    pub fn ticks_ceil(self, d: Duration, min: Tick) -> Tick {
        let per = u128::from(self.micros_per_tick());
        let t = d.as_micros().div_ceil(per);
        (u64::try_from(t).unwrap_or(u64::MAX)).max(min)
    }

    pub fn duration(self, ticks: Tick) -> Duration {
        Duration::from_micros(ticks.saturating_mul(self.micros_per_tick()))
    }
}
