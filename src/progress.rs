//! Progress of a long `rotate` run (`--all` after a suspected exposure, say): on a terminal a
//! live bar on stderr (done, failed, in flight, rate, time left); off a terminal (a CronJob's
//! log) a progress line in the log format every few seconds. Neither touches stdout, where the
//! summary table goes.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a progress line is logged off a terminal, unless `ROTATOR_PROGRESS_INTERVAL` says.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    done: u64,
    failed: u64,
    in_flight: u64,
}

/// One run's progress; cheap to clone into each rotation.
#[derive(Clone)]
pub struct Progress {
    total: u64,
    started: Instant,
    counts: Arc<Mutex<Counts>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Progress of `total` rotations: a bar when stderr is a terminal and there is more than
    /// one, else nothing shown until [`Progress::log_periodically`] is driven.
    pub fn new(total: u64) -> Progress {
        let bar = (total > 1 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} rotated · {msg} · {per_sec} · {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress { total, started: Instant::now(), counts: Arc::default(), bar }
    }

    pub fn start(&self) {
        self.update(|c| c.in_flight += 1);
    }

    /// One rotation ended; `failed` if it did not reach its goal.
    pub fn finish(&self, failed: bool) {
        self.update(|c| {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.done += 1;
            c.failed += u64::from(failed);
        });
    }

    fn update(&self, change: impl FnOnce(&mut Counts)) {
        let counts = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut counts);
            *counts
        };
        if let Some(bar) = &self.bar {
            bar.set_position(counts.done);
            bar.set_message(format!("{} failed · {} in flight", counts.failed, counts.in_flight));
        }
    }

    /// Off a terminal, logs a progress line every the interval until the run ends: the
    /// future never completes (race it against the run).
    pub async fn log_periodically(&self) -> std::convert::Infallible {
        if self.bar.is_some() || self.total <= 1 {
            return std::future::pending().await;
        }
        let every = std::env::var("ROTATOR_PROGRESS_INTERVAL")
            .ok()
            .and_then(|t| crate::duration::parse(&t).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(LOG_EVERY);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let c = *self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let elapsed = self.started.elapsed().as_secs_f64();
            let per_minute = c.done as f64 / elapsed * 60.0;
            let eta = (per_minute > 0.0).then(|| ((self.total - c.done) as f64 / per_minute * 60.0).round() as u64);
            tracing::info!(
                done = c.done,
                failed = c.failed,
                in_flight = c.in_flight,
                total = self.total,
                per_minute = per_minute.round() as u64,
                eta_seconds = eta,
                "progress"
            );
        }
    }

    /// Removes the bar (the summary follows on stdout).
    pub fn close(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
