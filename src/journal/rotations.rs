//! Rotations and their steps: every write is fenced by the policy's lease (it changes nothing
//! unless the writer still holds it), and a phase and the step that reached it commit together.
//! Reads: one rotation, the unfinished ones, a pass's view (per policy the latest and latest
//! promoted, and the unfinished), the rotations holding a credential, and history.

use sqlx::{AssertSqlSafe, Row};

use super::rows::{insert_query, request_done_query, rotation_from_row, step_query, update_query};
use chrono::Utc;

use super::{Error, Journal, Lease, Rotation, Step, StepStatus, parse_ts, superseded_by, ts};
use crate::rotation::Phase;

impl Journal {
    fn fenced(n: u64, what: &'static str) -> Result<(), Error> {
        if n == 1 { Ok(()) } else { Err(Error::LeaseLost { what }) }
    }

    /// Records a new rotation. Called before any side effect, under the policy's lease.
    /// A request with the rotation's ID is marked `done` in the same transaction.
    pub async fn insert(&self, r: &Rotation, lease: &Lease) -> Result<(), Error> {
        let query = |source| Error::Query { what: "insert rotation", source };
        let mut tx = self.pool.begin().await.map_err(query)?;
        let n = insert_query(r, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(n, "insert rotation")?;
        request_done_query(&r.id).execute(&mut *tx).await.map_err(query)?;
        tx.commit().await.map_err(query)
    }

    /// Saves a rotation's mutable fields, only while `lease` is still the policy's lease.
    ///
    /// A rotation that fails hands back, in the same transaction, what it superseded: those
    /// rotations are `promoted` again, with their revocations still to do, so nothing they held
    /// is forgotten.
    pub async fn update(&self, r: &Rotation, lease: &Lease) -> Result<(), Error> {
        self.update_and_step(r, None, lease).await
    }

    /// [`Journal::update`] and, in the same transaction, a step record `(step, status,
    /// detail)`: a phase and the step that reached it are committed together (one commit, so
    /// one disk sync, instead of two).
    pub async fn update_with_step(
        &self,
        r: &Rotation,
        (step, status, detail): (&str, StepStatus, &str),
        lease: &Lease,
    ) -> Result<(), Error> {
        self.update_and_step(r, Some((step, status.as_str(), detail)), lease).await
    }

    async fn update_and_step(
        &self,
        r: &Rotation,
        step: Option<(&str, &str, &str)>,
        lease: &Lease,
    ) -> Result<(), Error> {
        let query = |source| Error::Query { what: "update rotation", source };
        if r.phase != Phase::Failed && step.is_none() {
            let n = update_query(r, lease).execute(&self.pool).await.map_err(query)?.rows_affected();
            return Self::fenced(n, "update rotation");
        }
        let mut tx = self.pool.begin().await.map_err(query)?;
        let n = update_query(r, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(n, "update rotation")?;
        if r.phase == Phase::Failed {
            // A failed rotation gives back what it superseded (see `supersede`).
            sqlx::query(
                "UPDATE rotations SET phase = 'promoted', waiting = NULL, finished_at = NULL, updated_at = $3
                 WHERE policy = $1 AND phase = 'superseded' AND waiting LIKE $2",
            )
            .bind(&r.policy)
            .bind(format!("{}%", superseded_by(&r.id)))
            .bind(ts(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(query)?;
        }
        if let Some((step, status, detail)) = step {
            let n = step_query(&r.id, step, status, detail, lease)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "insert step", source })?
                .rows_affected();
            Self::fenced(n, "insert step")?;
        }
        tx.commit().await.map_err(query)
    }

    /// Records `new` and saves `superseded` (already marked so, their `waiting` beginning with
    /// [`superseded_by`] `new`) in one transaction: the work passes from them to the new
    /// rotation with no moment where both, or neither, hold it.
    pub async fn supersede(&self, superseded: &[Rotation], new: &Rotation, lease: &Lease) -> Result<(), Error> {
        let query = |source| Error::Query { what: "supersede rotation", source };
        let mut tx = self.pool.begin().await.map_err(query)?;
        let inserted = insert_query(new, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(inserted, "insert rotation")?;
        request_done_query(&new.id).execute(&mut *tx).await.map_err(query)?;
        for old in superseded {
            let updated = update_query(old, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
            Self::fenced(updated, "update rotation")?;
        }
        tx.commit().await.map_err(query)
    }

    /// Appends a step record, only while `lease` is still the policy's lease (which also keeps
    /// `seq` free of races). `detail` holds IDs and messages only.
    pub async fn step(
        &self,
        rotation_id: &str,
        step: &str,
        status: StepStatus,
        detail: &str,
        lease: &Lease,
    ) -> Result<(), Error> {
        let n = step_query(rotation_id, step, status.as_str(), detail, lease)
            .execute(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "insert step", source })?
            .rows_affected();
        Self::fenced(n, "insert step")
    }

    pub async fn get(&self, id: &str) -> Result<Option<Rotation>, Error> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {} FROM rotations WHERE id = $1", self.columns)))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read rotation", source })?;
        row.map(|r| rotation_from_row(&r)).transpose()
    }

    /// Rotations not yet completed or failed, oldest first; all policies when `policy` is `None`.
    pub async fn unfinished(&self, policy: Option<&str>) -> Result<Vec<Rotation>, Error> {
        let terminal: Vec<String> =
            Phase::ALL.iter().filter(|p| p.is_terminal()).map(|p| format!("'{}'", p.as_str())).collect();
        let sql = format!(
            "SELECT {} FROM rotations WHERE phase NOT IN ({}) AND ($1 = '' OR policy = $1) ORDER BY started_at, id",
            self.columns,
            terminal.join(", ")
        );
        self.fetch(sql, policy.unwrap_or(""), "read unfinished rotations").await
    }

    /// What a reconciliation pass needs rather than the whole history: for each policy its
    /// latest rotation and its latest promoted one, and every unfinished rotation; newest first.
    /// Indexed reads (`rotations_by_policy`, `rotations_promoted`, `rotations_by_phase`) on
    /// SQLite and PostgreSQL alike, whatever the length of the history.
    pub async fn pass_view(&self) -> Result<Vec<Rotation>, Error> {
        let list = |keep: fn(Phase) -> bool| -> String {
            Phase::ALL.iter().filter(|p| keep(**p)).map(|p| format!("'{}'", p.as_str())).collect::<Vec<_>>().join(", ")
        };
        let unfinished = list(|p| !p.is_terminal());
        // Qualified for the joins; a default standing in for a column an older journal lacks
        // (read-only) is a constant and stays as it is.
        let columns = self
            .columns
            .split(',')
            .map(str::trim)
            .map(|c| match c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                true => format!("r.{c}"),
                false => c.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        // UNION drops the row that is both a policy's latest and its latest promoted one.
        let sql = format!(
            "SELECT {columns} FROM rotations r
             JOIN (SELECT policy, MAX(started_at) AS at FROM rotations GROUP BY policy) l
               ON r.policy = l.policy AND r.started_at = l.at
             UNION
             SELECT {columns} FROM rotations r
             JOIN (SELECT policy, MAX(promoted_at) AS at FROM rotations WHERE promoted_at IS NOT NULL GROUP BY policy) l
               ON r.policy = l.policy AND r.promoted_at = l.at
             UNION
             SELECT {} FROM rotations WHERE phase IN ({unfinished})",
            self.columns
        );
        // Built only from this module's constants and phase names, never from input.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read the latest rotations", source })?;
        let mut out = rows.iter().map(rotation_from_row).collect::<Result<Vec<_>, _>>()?;
        // Newest first, as `history` orders them.
        out.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        Ok(out)
    }

    /// Most recent rotations first; all policies when `policy` is `None`.
    /// Policies other than `except` that still serve `credential` as far as the journal knows:
    /// their latest rotation set out to replace it and has not promoted (in flight, or failed
    /// and rolled back, so their destinations still hold it), or made it current.
    // TODO-correctness: a policy that holds the credential but has never rotated is unknown to
    // the journal; only its destinations know.
    /// Returns the latest rotation of each such policy (its destinations say where).
    pub async fn holders(&self, credential: &str, except: &str) -> Result<Vec<Rotation>, Error> {
        // A text match finds the candidates (LIKE's wildcards only widen it); the latest rotation
        // of each decides exactly.
        let pattern = format!("%{}%", serde_json::to_string(credential).unwrap_or_default());
        let rows = sqlx::query(
            "SELECT DISTINCT policy FROM rotations WHERE policy <> $1 AND (old_credentials LIKE $2 OR new_credential_id = $3)",
        )
        .bind(except)
        .bind(pattern)
        .bind(credential)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "find holders", source })?;
        let mut holders = Vec::new();
        for row in rows {
            let policy: String = row.try_get(0).map_err(|source| Error::Query { what: "find holders", source })?;
            // The newest rotation that touched the policy's destinations decides: one that
            // promoted replaced what they served; one that set out to replace credentials and
            // did not promote (in flight, rolled back) leaves them served. A rotation that failed
            // before recording what it replaces says nothing.
            let history = self.history(Some(&policy), 1_000).await?;
            let Some(decisive) = history.into_iter().find(|r| r.phase.is_promoted() || !r.old_credentials.is_empty())
            else {
                continue;
            };
            let replacing = decisive.old_credentials.iter().any(|c| c == credential) && !decisive.phase.is_promoted();
            let made_current =
                decisive.new_credential_id.as_deref() == Some(credential) && decisive.phase.is_promoted();
            if replacing || made_current {
                holders.push(decisive);
            }
        }
        Ok(holders)
    }

    pub async fn history(&self, policy: Option<&str>, limit: i64) -> Result<Vec<Rotation>, Error> {
        let sql = format!(
            "SELECT {} FROM rotations WHERE ($1 = '' OR policy = $1) ORDER BY started_at DESC, id DESC LIMIT {}",
            self.columns,
            limit.max(1)
        );
        self.fetch(sql, policy.unwrap_or(""), "read history").await
    }

    async fn fetch(&self, sql: String, policy: &str, what: &'static str) -> Result<Vec<Rotation>, Error> {
        // Built only from this module's constants and phase names, never from input.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(policy)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| Error::Query { what, source })?;
        rows.iter().map(rotation_from_row).collect()
    }

    pub async fn steps(&self, rotation_id: &str) -> Result<Vec<Step>, Error> {
        let rows = sqlx::query(
            "SELECT rotation_id, seq, at, step, status, detail FROM steps WHERE rotation_id = $1 ORDER BY seq",
        )
        .bind(rotation_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "read steps", source })?;
        rows.iter()
            .map(|row| {
                let get =
                    |i: usize| row.try_get::<String, _>(i).map_err(|source| Error::Query { what: "read step", source });
                let at = get(2)?;
                Ok(Step {
                    rotation_id: get(0)?,
                    seq: row.try_get::<i64, _>(1).map_err(|source| Error::Query { what: "read step", source })?,
                    at: parse_ts(rotation_id, Some(at))?.unwrap_or_default(),
                    step: get(3)?,
                    status: {
                        let text = get(4)?;
                        StepStatus::parse(&text).ok_or_else(|| Error::Corrupt {
                            id: rotation_id.to_string(),
                            detail: format!("unknown step status `{text}`"),
                        })?
                    },
                    detail: get(5)?,
                })
            })
            .collect()
    }
}
