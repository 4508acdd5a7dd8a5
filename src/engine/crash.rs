//! Test hooks of the crash-matrix tests, compiled in only with the `crash-points` feature: a
//! point where the process dies as a SIGKILL would, and one where it waits for a test.

/// Test hook for the crash-matrix tests: when `ROTATOR_CRASH_AT` names this point, the process
/// dies on the spot, as a SIGKILL would (no destructors, no flushing, no lease release). Only
/// in builds with the `crash-points` feature (`scripts/test` enables it), so that in a release
/// build no environment variable can stop a rotation halfway.
#[cfg(feature = "crash-points")]
pub(super) fn crash_point(point: &str) {
    if std::env::var("ROTATOR_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("crash point `{point}` reached (ROTATOR_CRASH_AT); aborting");
        std::process::abort();
    }
}

/// Without the `crash-points` feature there is no crash hook: `ROTATOR_CRASH_AT` is ignored.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(super) fn crash_point(_point: &str) {}

/// Test hook beside the crash hook: when `ROTATOR_PAUSE_AT` names this point, the process
/// creates `$ROTATOR_PAUSE_FILE.reached` and waits there until `$ROTATOR_PAUSE_FILE` exists, so
/// a test can let another process act inside a window that is otherwise too short to hit.
#[cfg(feature = "crash-points")]
pub(super) async fn pause_point(point: &str) {
    let (Ok(at), Ok(file)) = (std::env::var("ROTATOR_PAUSE_AT"), std::env::var("ROTATOR_PAUSE_FILE")) else { return };
    if at != point {
        return;
    }
    let _ = std::fs::write(format!("{file}.reached"), point);
    while !std::path::Path::new(&file).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(super) async fn pause_point(_point: &str) {}
