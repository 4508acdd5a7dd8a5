//! Unit tests of the journal on SQLite: what a pass reads.

use super::*;
use crate::rotation::Phase;

/// A pass reads, per policy, the latest rotation and the latest promoted one, and every
/// unfinished one, never the rest of the history.
#[tokio::test]
async fn a_pass_reads_only_the_latest_and_the_unfinished_rotations() {
    let dir = std::env::temp_dir().join(format!("rotator-pass-view-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = Journal::open(dir.join("j.db").to_str().unwrap()).await.unwrap();
    let rows = [
        // p: two old completed ones, the latest completed, then a failed one.
        ("p", "a", Phase::Completed, "2026-01-01T00:00:00Z"),
        ("p", "b", Phase::Completed, "2026-02-01T00:00:00Z"),
        ("p", "c", Phase::Completed, "2026-03-01T00:00:00Z"),
        ("p", "d", Phase::Failed, "2026-04-01T00:00:00Z"),
        // q: a promoted one awaiting revocation under a newer one in flight.
        ("q", "e", Phase::Completed, "2026-01-01T00:00:00Z"),
        ("q", "f", Phase::Promoted, "2026-02-01T00:00:00Z"),
        ("q", "g", Phase::Staged, "2026-03-01T00:00:00Z"),
        // r: never promoted.
        ("r", "h", Phase::Failed, "2026-01-01T00:00:00Z"),
        ("r", "i", Phase::Failed, "2026-02-01T00:00:00Z"),
    ];
    for (policy, id, phase, started) in rows {
        let lease = journal.acquire(policy, "test", Duration::from_secs(30)).await.unwrap().unwrap();
        let mut r = Rotation::example(id, phase, started);
        r.policy = policy.into();
        journal.insert(&r, &lease).await.unwrap();
        journal.release(&lease).await.unwrap();
    }
    let ids: Vec<String> = journal.pass_view().await.unwrap().into_iter().map(|r| r.id).collect();
    // Newest first, as `history` orders them.
    assert_eq!(ids, ["d", "g", "c", "i", "f"]);
    journal.close().await;
    std::fs::remove_dir_all(&dir).ok();
}
