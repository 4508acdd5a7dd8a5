//! The durable journal: one row per rotation (its phase and the IDs it needs to resume), one row
//! per step before and after each side effect, per-policy leases that keep one rotation in
//! flight per policy, and on-demand requests from the moment they are accepted until their
//! rotation is recorded. SQLite by default (a file, created on first use), PostgreSQL for several
//! replicas; the SQL is written once for both through sqlx's `Any` driver. The journal holds
//! credential IDs and fingerprints, never a secret value: nothing of type `Secret` can reach it,
//! because every column is written from plain strings the engine builds from IDs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe};

use crate::rotation::Rotation;

mod leases;
mod requests;
mod rotations;
mod rows;
#[cfg(test)]
mod tests;

use rows::{ADDED_COLUMNS, COLUMNS, SCHEMA, parse_ts, ts};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal: {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal: corrupt row for rotation {id}: {detail}")]
    Corrupt { id: String, detail: String },
    /// A write under a lease that another process has taken since: this process must stop.
    #[error("journal: {what}: the policy's lease was taken over by another process")]
    LeaseLost { what: &'static str },
}

/// One step record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Step {
    pub rotation_id: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub step: String,
    pub status: StepStatus,
    pub detail: String,
}

/// How a step stood when it was recorded: before its side effect, after it, or failed. Stored
/// as its `as_str` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// About to cause a side effect.
    Intent,
    Done,
    Failed,
    /// A call whose answer was lost: its side effect may or may not have happened (a create
    /// that timed out).
    Uncertain,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Intent => "intent",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Uncertain => "uncertain",
        }
    }

    fn parse(text: &str) -> Option<StepStatus> {
        [StepStatus::Intent, StepStatus::Done, StepStatus::Failed, StepStatus::Uncertain]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for StepStatus {
    /// Padded like a `str`, so step listings line up.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A held lease. `fence` increases with every acquisition (released leases are expired, not
/// deleted), and every journal write of a rotation checks holder and fence, so a process whose
/// lease was taken over cannot write any more.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub policy: String,
    pub holder: String,
    pub fence: i64,
}

/// Who holds a policy's lease when it could not be taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub holder: String,
    pub expires_at: DateTime<Utc>,
}

/// An on-demand rotation request, recorded before it is answered so any process on the journal
/// can run it. Its ID becomes the rotation's ID; recording that rotation marks the request `done`
/// in the same transaction, so a request runs at most once.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Request {
    pub id: String,
    pub policy: String,
    pub reason: Option<String>,
    pub compromised: bool,
    /// The client's `Idempotency-Key`: a retried request with the same key for the same policy
    /// gets this request back.
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub state: RequestState,
}

/// Where a request is: waiting (`queued`), taken up by a process that has not recorded its
/// rotation yet (`started`; any process runs it again if that one dies), or recorded (`done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Queued,
    Started,
    Done,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Started => "started",
            RequestState::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<RequestState> {
        [RequestState::Queued, RequestState::Started, RequestState::Done].into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Clone)]
pub struct Journal {
    pool: AnyPool,
    url: String,
    /// What `SELECT` reads of a rotation: [`COLUMNS`], except that a journal opened read-only
    /// from an earlier version reads the columns it lacks as their defaults.
    columns: std::sync::Arc<str>,
    sqlite: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.url)
    }
}

/// Turns what a user writes (`rotator.db`, `sqlite://x.db`, `postgres://…`) into a sqlx URL.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_string()
    } else if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if rest.contains("mode=") || rest.contains(":memory:") {
            format!("sqlite://{rest}")
        } else {
            format!("sqlite://{rest}?mode=rwc")
        }
    } else {
        format!("sqlite://{url}?mode=rwc")
    }
}

/// A URL safe to print: any password is removed.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparseable (say, an unescaped `/` in a password): hide everything between the
        // scheme and the last `@`.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
            _ => url.to_string(),
        },
    }
}

impl Journal {
    /// Opens (and creates, for SQLite) the journal and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Journal, Error> {
        sqlx::any::install_default_drivers();
        let full = normalize_url(url);
        let shown = display_url(url);
        let sqlite = full.starts_with("sqlite:");
        let mut options =
            AnyPoolOptions::new().max_connections(if sqlite { 1 } else { 8 }).acquire_timeout(Duration::from_secs(30));
        if sqlite {
            // Per connection, so a recycled connection gets them too. WAL lets `status` read while
            // a rotation writes; the busy timeout lets two processes on one file wait for each
            // other instead of failing; FULL makes every committed step survive a power cut.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in
                        ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 10000", "PRAGMA synchronous = FULL"]
                    {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = options.connect(&full).await.map_err(|source| Error::Open { url: shown.clone(), source })?;
        let journal = Journal { pool, url: shown, columns: COLUMNS.into(), sqlite };
        let mut tx = journal.pool.begin().await.map_err(|source| Error::Query { what: "create schema", source })?;
        if !sqlite {
            // Replicas starting together would race on CREATE TABLE IF NOT EXISTS.
            sqlx::query("SELECT pg_advisory_xact_lock(726370617469)")
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "lock schema", source })?;
        }
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "create schema", source })?;
        }
        tx.commit().await.map_err(|source| Error::Query { what: "create schema", source })?;
        journal.migrate().await?;
        Ok(journal)
    }

    /// Brings a journal made by an earlier version up to date: columns added since are added
    /// with their defaults (each step checks first, so it is safe to repeat and to race).
    async fn migrate(&self) -> Result<(), Error> {
        for (column, definition) in ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
            if sqlx::query(AssertSqlSafe(probe)).execute(&self.pool).await.is_err() {
                let alter = format!("ALTER TABLE rotations ADD COLUMN {column} {definition}");
                if let Err(source) = sqlx::query(AssertSqlSafe(alter)).execute(&self.pool).await {
                    // Another process may have added it meanwhile.
                    let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
                    if sqlx::query(AssertSqlSafe(probe)).execute(&self.pool).await.is_err() {
                        return Err(Error::Query { what: "migrate schema", source });
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens an existing journal for reading only, creating nothing: `None` when a SQLite
    /// journal file does not exist yet (nothing has been rotated). For `plan` and dry runs.
    pub async fn open_read_only(url: &str) -> Result<Option<Journal>, Error> {
        sqlx::any::install_default_drivers();
        let full = normalize_url(url);
        let shown = display_url(url);
        let full = match full.strip_prefix("sqlite://") {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or(rest);
                if path == ":memory:" || !std::path::Path::new(path).exists() {
                    return Ok(None);
                }
                format!("sqlite://{path}?mode=ro")
            }
            None => full,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&full)
            .await
            .map_err(|source| Error::Open { url: shown.clone(), source })?;
        let sqlite = full.starts_with("sqlite:");
        let mut journal = Journal { pool, url: shown, columns: COLUMNS.into(), sqlite };
        // Read-only: no migration, so the columns added since its version read as defaults.
        let mut columns = COLUMNS.to_string();
        for (column, definition) in ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
            if sqlx::query(AssertSqlSafe(probe)).execute(&journal.pool).await.is_err() {
                let default = definition.split_once("DEFAULT ").map(|(_, d)| d).unwrap_or("NULL");
                columns = columns.replace(column, &format!("{default} AS {column}"));
            }
        }
        journal.columns = columns.into();
        Ok(Some(journal))
    }

    /// The journal's URL without a password, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "ping", source })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How the `waiting` of a rotation superseded by rotation `id` begins.
pub fn superseded_by(id: &str) -> String {
    format!("superseded by rotation {id}")
}
