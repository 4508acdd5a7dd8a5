//! The simulator's clocks, read once per request ([`Now`]): wall time for timestamps, rate
//! windows and cursors, monotonic time for token expiry.

use std::time::Instant;

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

impl Now {
    pub(super) fn read() -> Now {
        let wall = Utc::now().trunc_subsecs(3);
        Now { wall, mono: Instant::now(), unix: u64::try_from(wall.timestamp()).unwrap_or(0) }
    }
}
