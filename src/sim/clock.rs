//! The simulator's clocks, read once per request ([`Now`]): wall time for timestamps, rate
//! windows and cursors, monotonic time for token expiry. A [`Clock`] is the real time plus an
//! offset a test may advance ([`crate::sim::Simulator::advance`]), so it can expire tokens and
//! close rate windows without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};

/// Both clocks read once per request: wall time for timestamps and rate windows, monotonic time
/// for token expiry (so a clock step cannot revive or kill tokens).
#[derive(Clone, Copy)]
pub(super) struct Now {
    /// Millisecond precision, as a real API would show it.
    pub(super) wall: DateTime<Utc>,
    pub(super) mono: Instant,
    pub(super) unix: u64,
}

/// The real clocks, moved forward by however far a test advanced them. Only ever forward, so
/// every invariant that holds for real time (tokens expire, windows close) holds for it.
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// Milliseconds added to both clocks.
    offset_ms: AtomicU64,
}

impl Clock {
    /// Both clocks now.
    pub(super) fn now(&self) -> Now {
        let offset = Duration::from_millis(self.offset_ms.load(Ordering::Relaxed));
        let wall = (Utc::now() + offset).trunc_subsecs(3);
        Now { wall, mono: Instant::now() + offset, unix: u64::try_from(wall.timestamp()).unwrap_or(0) }
    }

    /// Moves both clocks forward by `by`.
    pub(super) fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
