//! Per-policy leases: one rotation in flight per policy across processes. Expiry is set and
//! judged by the database's clock alone; every acquisition raises the fence, which every write of
//! a rotation checks.

use std::time::Duration;

use chrono::DateTime;

use sqlx::{AssertSqlSafe, Row};

use super::rows::millis;
use super::{Error, Holder, Journal, Lease};

impl Journal {
    /// SQL for the database's clock in Unix milliseconds. Lease expiry is set and judged by it
    /// alone, never by a replica's clock, so replicas whose clocks disagree still agree on
    /// whether a lease has expired.
    fn db_now(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    /// Takes the policy's lease for `ttl` if it is free, expired, or already ours. Returns the
    /// current holder when someone else has it.
    pub async fn acquire(&self, policy: &str, holder: &str, ttl: Duration) -> Result<Result<Lease, Holder>, Error> {
        let now = self.db_now();
        let taken = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO leases (policy, holder, expires_at, fence) VALUES ($1, $2, {now} + $3, 1)
             ON CONFLICT (policy) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
                fence = leases.fence + 1
             WHERE leases.expires_at < {now} OR leases.holder = excluded.holder"
        )))
        .bind(policy)
        .bind(holder)
        .bind(millis(ttl))
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "acquire lease", source })?
        .rows_affected();
        let row = sqlx::query("SELECT holder, expires_at, fence FROM leases WHERE policy = $1")
            .bind(policy)
            .fetch_one(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read lease", source })?;
        let current: String = row.try_get(0).map_err(|source| Error::Query { what: "read lease", source })?;
        let expires_at: i64 = row.try_get(1).map_err(|source| Error::Query { what: "read lease", source })?;
        let fence: i64 = row.try_get(2).map_err(|source| Error::Query { what: "read lease", source })?;
        if taken == 1 && current == holder {
            Ok(Ok(Lease { policy: policy.to_string(), holder: holder.to_string(), fence }))
        } else {
            Ok(Err(Holder {
                holder: current,
                expires_at: DateTime::from_timestamp_millis(expires_at).unwrap_or_default(),
            }))
        }
    }

    /// Takes the lease from `dead`, a holder known to be gone (a process of this host that no
    /// longer exists), without waiting for it to expire.
    pub async fn take_over(
        &self,
        policy: &str,
        dead: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leases SET holder = $1, expires_at = {} + $2, fence = fence + 1 WHERE policy = $3 AND holder = $4",
            self.db_now()
        )))
        .bind(holder)
        .bind(millis(ttl))
        .bind(policy)
        .bind(dead)
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "take over lease", source })?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        let fence: i64 = sqlx::query("SELECT fence FROM leases WHERE policy = $1 AND holder = $2")
            .bind(policy)
            .bind(holder)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|source| Error::Query { what: "read lease", source })?;
        Ok(Some(Lease { policy: policy.to_string(), holder: holder.to_string(), fence }))
    }

    /// Extends a held lease; `false` if it was lost (expired and taken by someone else).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, Error> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leases SET expires_at = {} + $1 WHERE policy = $2 AND holder = $3 AND fence = $4",
            self.db_now()
        )))
        .bind(millis(ttl))
        .bind(&lease.policy)
        .bind(&lease.holder)
        .bind(lease.fence)
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "renew lease", source })?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives the lease up by expiring it; the row stays, so the fence keeps growing.
    pub async fn release(&self, lease: &Lease) -> Result<(), Error> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE policy = $1 AND holder = $2 AND fence = $3")
            .bind(&lease.policy)
            .bind(&lease.holder)
            .bind(lease.fence)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "release lease", source })
    }
}
