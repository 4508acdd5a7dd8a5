//! The SQL the journal is written in, once for SQLite and PostgreSQL: the schema and the columns
//! added later, the fenced statements, and rows read back into rotations and requests
//! (timestamps as RFC 3339 text, lists as JSON).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Error, Lease, Request, RequestState, Rotation};
use crate::credential::CredentialKind;
use crate::rotation::Phase;

/// Columns added to `rotations` after its first version, with their SQL definitions; new
/// journals get them from `SCHEMA`, older ones from `Journal::migrate`.
pub(super) const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("revoke_first", "BIGINT NOT NULL DEFAULT 0"),
    ("waiting", "TEXT"),
    ("revoked_credentials", "TEXT NOT NULL DEFAULT '[]'"),
];

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rotations (
        id TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        kind TEXT NOT NULL,
        phase TEXT NOT NULL,
        reason TEXT,
        compromised BIGINT NOT NULL,
        credential_name TEXT NOT NULL,
        new_credential_id TEXT,
        new_fingerprint TEXT,
        old_credentials TEXT NOT NULL,
        destinations TEXT NOT NULL,
        promoted_at TEXT,
        revoke_after TEXT,
        revoked_at TEXT,
        error TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT,
        revoke_first BIGINT NOT NULL,
        waiting TEXT,
        revoked_credentials TEXT NOT NULL DEFAULT '[]'
    )",
    "CREATE INDEX IF NOT EXISTS rotations_by_policy ON rotations (policy, started_at)",
    // A reconciliation pass reads each policy's latest promotion and the unfinished rotations.
    "CREATE INDEX IF NOT EXISTS rotations_promoted ON rotations (policy, promoted_at)",
    "CREATE INDEX IF NOT EXISTS rotations_by_phase ON rotations (phase)",
    "CREATE TABLE IF NOT EXISTS steps (
        rotation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at TEXT NOT NULL,
        step TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (rotation_id, seq)
    )",
    "CREATE TABLE IF NOT EXISTS leases (
        policy TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        fence BIGINT NOT NULL
    )",
    // Journals made before requests were durable get the table (and its indexes) on open.
    "CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        reason TEXT,
        compromised BIGINT NOT NULL,
        idempotency_key TEXT,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    // One open request per policy, whichever process accepted it: the database refuses a second.
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_open_by_policy ON requests (policy) WHERE state <> 'done'",
    // A key names one request per policy (NULLs, requests without a key, are all distinct).
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests (policy, idempotency_key)",
];

/// A lease duration in milliseconds, for SQL.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, which sorts correctly as text on
/// both backends.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn parse_ts(id: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, Error> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::Corrupt { id: id.to_string(), detail: format!("timestamp `{t}`: {e}") })
    })
    .transpose()
}

/// Marks the request whose rotation is being recorded as `done` (a no-op for rotations nobody
/// requested through the API).
pub(super) fn request_done_query(id: &str) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query("UPDATE requests SET state = 'done', updated_at = $2 WHERE id = $1 AND state <> 'done'")
        .bind(id)
        .bind(ts(Utc::now()))
}

pub(super) fn request_from_row(row: &AnyRow) -> Result<Request, Error> {
    let q = |source| Error::Query { what: "read request", source };
    let id: String = row.try_get(0).map_err(q)?;
    let state: String = row.try_get(6).map_err(q)?;
    let corrupt = |detail: String| Error::Corrupt { id: id.clone(), detail };
    Ok(Request {
        policy: row.try_get(1).map_err(q)?,
        reason: row.try_get(2).map_err(q)?,
        compromised: row.try_get::<i64, _>(3).map_err(q)? != 0,
        idempotency_key: row.try_get(4).map_err(q)?,
        created_at: parse_ts(&id, Some(row.try_get(5).map_err(q)?))?.unwrap_or_default(),
        state: RequestState::parse(&state).ok_or_else(|| corrupt(format!("request state `{state}`")))?,
        id,
    })
}

/// The fenced `INSERT` of a new rotation: it writes nothing unless `lease` is the policy's lease.
pub(super) fn insert_query<'q>(
    r: &'q Rotation,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO rotations (id, policy, kind, phase, reason, compromised, credential_name, new_credential_id,
            new_fingerprint, old_credentials, destinations, promoted_at, revoke_after, revoked_at, error,
            started_at, updated_at, finished_at, revoke_first, waiting, revoked_credentials)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $23
         WHERE EXISTS (SELECT 1 FROM leases WHERE policy = $2 AND holder = $21 AND fence = $22)",
    )
    .bind(&r.id)
    .bind(&r.policy)
    .bind(r.kind.as_str())
    .bind(r.phase.as_str())
    .bind(r.reason.clone())
    .bind(r.compromised as i64)
    .bind(&r.credential_name)
    .bind(r.new_credential_id.clone())
    .bind(r.new_fingerprint.clone())
    .bind(serde_json::to_string(&r.old_credentials).unwrap_or_default())
    .bind(serde_json::to_string(&r.destinations).unwrap_or_default())
    .bind(r.promoted_at.map(ts))
    .bind(r.revoke_after.map(ts))
    .bind(r.revoked_at.map(ts))
    .bind(r.error.clone())
    .bind(ts(r.started_at))
    .bind(ts(r.updated_at))
    .bind(r.finished_at.map(ts))
    .bind(r.revoke_first as i64)
    .bind(r.waiting.clone())
    .bind(&lease.holder)
    .bind(lease.fence)
    .bind(serde_json::to_string(&r.revoked_credentials).unwrap_or_default())
}

/// The fenced `UPDATE` of a rotation's mutable fields.
/// Appends a step record, only while `lease` is the policy's lease (which also keeps `seq` free
/// of races). The lease check sits outside the aggregate: an aggregate without GROUP BY yields
/// a row even when its WHERE matches nothing.
pub(super) fn step_query<'q>(
    rotation_id: &'q str,
    step: &'q str,
    status: &'q str,
    detail: &'q str,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO steps (rotation_id, seq, at, step, status, detail)
         SELECT $1, last.seq + 1, $2, $3, $4, $5
         FROM (SELECT COALESCE(MAX(seq), 0) AS seq FROM steps WHERE rotation_id = $1) last
         WHERE EXISTS (SELECT 1 FROM leases WHERE policy = $6 AND holder = $7 AND fence = $8)",
    )
    .bind(rotation_id)
    .bind(ts(Utc::now()))
    .bind(step)
    .bind(status)
    .bind(detail)
    .bind(&lease.policy)
    .bind(&lease.holder)
    .bind(lease.fence)
}

pub(super) fn update_query<'q>(
    r: &'q Rotation,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "UPDATE rotations SET phase = $2, new_credential_id = $3, new_fingerprint = $4, old_credentials = $5,
            promoted_at = $6, revoke_after = $7, revoked_at = $8, error = $9, updated_at = $10, finished_at = $11,
            compromised = $12, waiting = $13, revoked_credentials = $17
         WHERE id = $1 AND EXISTS (SELECT 1 FROM leases WHERE policy = $14 AND holder = $15 AND fence = $16)",
    )
    .bind(&r.id)
    .bind(r.phase.as_str())
    .bind(r.new_credential_id.clone())
    .bind(r.new_fingerprint.clone())
    .bind(serde_json::to_string(&r.old_credentials).unwrap_or_default())
    .bind(r.promoted_at.map(ts))
    .bind(r.revoke_after.map(ts))
    .bind(r.revoked_at.map(ts))
    .bind(r.error.clone())
    .bind(ts(r.updated_at))
    .bind(r.finished_at.map(ts))
    .bind(r.compromised as i64)
    .bind(r.waiting.clone())
    .bind(&r.policy)
    .bind(&lease.holder)
    .bind(lease.fence)
    .bind(serde_json::to_string(&r.revoked_credentials).unwrap_or_default())
}

pub(super) const COLUMNS: &str =
    "id, policy, kind, phase, reason, compromised, credential_name, new_credential_id, new_fingerprint,
    old_credentials, destinations, promoted_at, revoke_after, revoked_at, error, started_at, updated_at, finished_at,
    revoke_first, waiting, revoked_credentials";

pub(super) fn rotation_from_row(row: &AnyRow) -> Result<Rotation, Error> {
    let q = |source| Error::Query { what: "read rotation", source };
    let text = |i: usize| row.try_get::<String, _>(i).map_err(q);
    let opt = |i: usize| row.try_get::<Option<String>, _>(i).map_err(q);
    let id = text(0)?;
    let corrupt = |detail: String| Error::Corrupt { id: id.clone(), detail };
    let kind = text(2)?;
    let phase = text(3)?;
    let list = |i: usize| -> Result<Vec<String>, Error> {
        serde_json::from_str(&text(i)?).map_err(|e| corrupt(format!("column {i}: {e}")))
    };
    Ok(Rotation {
        policy: text(1)?,
        kind: CredentialKind::parse(&kind).ok_or_else(|| corrupt(format!("kind `{kind}`")))?,
        phase: Phase::from_str(&phase).map_err(|_| corrupt(format!("phase `{phase}`")))?,
        reason: opt(4)?,
        compromised: row.try_get::<i64, _>(5).map_err(q)? != 0,
        credential_name: text(6)?,
        new_credential_id: opt(7)?,
        new_fingerprint: opt(8)?,
        old_credentials: list(9)?,
        destinations: list(10)?,
        promoted_at: parse_ts(&id, opt(11)?)?,
        revoke_after: parse_ts(&id, opt(12)?)?,
        revoked_at: parse_ts(&id, opt(13)?)?,
        error: opt(14)?,
        started_at: parse_ts(&id, Some(text(15)?))?.unwrap_or_default(),
        updated_at: parse_ts(&id, Some(text(16)?))?.unwrap_or_default(),
        finished_at: parse_ts(&id, opt(17)?)?,
        revoke_first: row.try_get::<i64, _>(18).map_err(q)? != 0,
        waiting: opt(19)?,
        revoked_credentials: list(20)?,
        id,
    })
}
