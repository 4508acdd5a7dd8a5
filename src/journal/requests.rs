//! On-demand requests, recorded before they are answered: `queued` until a process takes one up
//! (`started`), `done` in the same transaction that records its rotation. The database refuses a
//! second open request of a policy and a reused idempotency key.

use chrono::Utc;
use sqlx::AssertSqlSafe;

use super::rows::request_from_row;
use super::{Error, Journal, Request, ts};

impl Journal {
    /// Records an accepted on-demand request. Refused by the database (an error) when the policy
    /// has an open request already or the key was used for it; the caller reads which.
    pub async fn add_request(&self, r: &Request) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO requests (id, policy, reason, compromised, idempotency_key, created_at, state, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $6)",
        )
        .bind(&r.id)
        .bind(&r.policy)
        .bind(r.reason.clone())
        .bind(r.compromised as i64)
        .bind(r.idempotency_key.clone())
        .bind(ts(r.created_at))
        .bind(r.state.as_str())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|source| Error::Query { what: "record request", source })
    }

    /// Requests not yet recorded as rotations, compromise requests first, then oldest first.
    pub async fn open_requests(&self) -> Result<Vec<Request>, Error> {
        self.requests("WHERE state <> 'done' ORDER BY compromised DESC, created_at, id", &[], "read requests").await
    }

    /// The request with this ID, whatever its state.
    pub async fn request(&self, id: &str) -> Result<Option<Request>, Error> {
        Ok(self.requests("WHERE id = $1", &[id], "read request").await?.pop())
    }

    /// The request made for `policy` with this `Idempotency-Key`, whatever its state.
    pub async fn request_by_key(&self, policy: &str, key: &str) -> Result<Option<Request>, Error> {
        Ok(self.requests("WHERE policy = $1 AND idempotency_key = $2", &[policy, key], "read request").await?.pop())
    }

    async fn requests(&self, filter: &'static str, binds: &[&str], what: &'static str) -> Result<Vec<Request>, Error> {
        // `filter` is one of this module's constants, never input.
        let sql = format!(
            "SELECT id, policy, reason, compromised, idempotency_key, created_at, state FROM requests {filter}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(|source| Error::Query { what, source })?;
        rows.iter().map(request_from_row).collect()
    }

    /// Notes that a process took the request up (it stays open until its rotation is recorded).
    pub async fn start_request(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE requests SET state = 'started', updated_at = $2 WHERE id = $1 AND state = 'queued'")
            .bind(id)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "start request", source })
    }
}
